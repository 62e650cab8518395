#!/usr/bin/env bash
# ensure_debs PKG...: makes sure each Debian package is installed, deciding by the package database
# (dpkg-query's status), never by which files happen to exist: the image ships libraries whose names look
# like what a step needs (LLVM 14's libclang-cpp.so.14 is not the libclang.so bindgen loads). Prints what it
# found and what it installed, so a CI log shows why a step installed nothing. Sourced by the steps.
ensure_debs() {
    local missing=() p status
    for p in "$@"; do
        status=$(dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null || true)
        if [ "$status" = installed ]; then
            echo "apt: found $p $(dpkg-query -W -f='${Version}' "$p")"
        else
            missing+=("$p")
        fi
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    if [ "$(id -u)" != 0 ]; then
        echo "apt: missing ${missing[*]}, and not root: cannot install"
        return 1
    fi
    echo "apt: installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    for p in "${missing[@]}"; do
        echo "apt: installed $p $(dpkg-query -W -f='${Version}' "$p")"
    done
}
