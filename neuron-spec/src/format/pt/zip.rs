//! The zip container of `torch.save` files: records stored uncompressed (method 0), so each record is a byte
//! range of the mapped file. Reads the central directory (zip64 too) and each record's local header; refuses
//! compressed, encrypted or out-of-bounds records.

use std::ops::Range;

/// Most records in one archive.
const MAX_RECORDS: usize = 1 << 20;

/// One stored record: its name and where its bytes are in the file.
#[derive(Debug, Clone)]
pub struct Record {
    /// The record name (`archive/data.pkl`, `archive/data/0`, ...).
    pub name: String,
    /// Its bytes in the file.
    pub range: Range<usize>,
}

fn u16_at(b: &[u8], at: usize) -> Result<u16, String> {
    b.get(at..at + 2).map(|s| u16::from_le_bytes([s[0], s[1]])).ok_or_else(|| format!("truncated zip at byte {at}"))
}
fn u32_at(b: &[u8], at: usize) -> Result<u32, String> {
    let s = b.get(at..at + 4).ok_or_else(|| format!("truncated zip at byte {at}"))?;
    Ok(u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
}
fn u64_at(b: &[u8], at: usize) -> Result<u64, String> {
    let s = b.get(at..at + 8).ok_or_else(|| format!("truncated zip at byte {at}"))?;
    let mut a = [0u8; 8];
    a.copy_from_slice(s);
    Ok(u64::from_le_bytes(a))
}
fn to_usize(v: u64, what: &str) -> Result<usize, String> {
    usize::try_from(v).map_err(|_| format!("{what} {v} does not fit in memory"))
}

/// The records of the zip archive `b` (a whole file), in central-directory order.
pub fn records(b: &[u8]) -> Result<Vec<Record>, String> {
    const EOCD: u32 = 0x0605_4b50;
    // The end-of-central-directory record is in the last 22 + 65535 bytes.
    let lo = b.len().saturating_sub(22 + 65535);
    let eocd = (lo..b.len().saturating_sub(21))
        .rev()
        .find(|&i| u32_at(b, i).ok() == Some(EOCD))
        .ok_or_else(|| "not a zip archive (no end of central directory: truncated?)".to_string())?;
    let mut count = u64::from(u16_at(b, eocd + 10)?);
    let mut cd_size = u64::from(u32_at(b, eocd + 12)?);
    let mut cd_off = u64::from(u32_at(b, eocd + 16)?);
    if count == 0xffff || cd_size == 0xffff_ffff || cd_off == 0xffff_ffff {
        // zip64: the locator sits just before the EOCD and points at the zip64 EOCD.
        let loc = eocd.checked_sub(20).ok_or("truncated zip64 locator")?;
        if u32_at(b, loc)? != 0x0706_4b50 {
            return Err("missing zip64 end-of-central-directory locator".into());
        }
        let e64 = to_usize(u64_at(b, loc + 8)?, "zip64 record offset")?;
        if u32_at(b, e64)? != 0x0606_4b50 {
            return Err("bad zip64 end-of-central-directory record".into());
        }
        count = u64_at(b, e64 + 32)?;
        cd_size = u64_at(b, e64 + 40)?;
        cd_off = u64_at(b, e64 + 48)?;
    }
    let count = to_usize(count, "record count")?;
    if count > MAX_RECORDS {
        return Err(format!("{count} records (at most {MAX_RECORDS})"));
    }
    let cd_off = to_usize(cd_off, "central directory offset")?;
    let cd_end = cd_off.checked_add(to_usize(cd_size, "central directory size")?).filter(|e| *e <= b.len());
    if cd_end.is_none() {
        return Err("central directory beyond the end of the file (truncated?)".into());
    }
    let mut out = Vec::with_capacity(count);
    let mut at = cd_off;
    for _ in 0..count {
        if u32_at(b, at)? != 0x0201_4b50 {
            return Err(format!("bad central directory entry at byte {at}"));
        }
        let flags = u16_at(b, at + 8)?;
        let method = u16_at(b, at + 10)?;
        let mut csize = u64::from(u32_at(b, at + 20)?);
        let mut usize_ = u64::from(u32_at(b, at + 24)?);
        let name_len = usize::from(u16_at(b, at + 28)?);
        let extra_len = usize::from(u16_at(b, at + 30)?);
        let comment_len = usize::from(u16_at(b, at + 32)?);
        let mut local = u64::from(u32_at(b, at + 42)?);
        let name_bytes = b.get(at + 46..at + 46 + name_len).ok_or("truncated central directory")?;
        let name = String::from_utf8(name_bytes.to_vec()).map_err(|_| "a record name that is not UTF-8".to_string())?;
        // zip64 extra field: the 0xffffffff fields, in order (uncompressed, compressed, local offset).
        let extra = b.get(at + 46 + name_len..at + 46 + name_len + extra_len).ok_or("truncated central directory")?;
        let mut e = 0;
        while e + 4 <= extra.len() {
            let id = u16_at(extra, e)?;
            let len = usize::from(u16_at(extra, e + 2)?);
            if id == 1 {
                let mut f = e + 4;
                for v in [&mut usize_, &mut csize, &mut local] {
                    if *v == 0xffff_ffff {
                        *v = u64_at(extra, f)?;
                        f += 8;
                    }
                }
            }
            e += 4 + len;
        }
        if method != 0 {
            return Err(format!("record {name} is compressed (method {method}); torch writes records stored"));
        }
        if flags & 1 != 0 {
            return Err(format!("record {name} is encrypted"));
        }
        if csize != usize_ {
            return Err(format!("record {name}: stored size {csize} differs from its size {usize_}"));
        }
        let local = to_usize(local, "local header offset")?;
        if u32_at(b, local)? != 0x0403_4b50 {
            return Err(format!("record {name}: bad local header at byte {local}"));
        }
        let start = local + 30 + usize::from(u16_at(b, local + 26)?) + usize::from(u16_at(b, local + 28)?);
        let end = start
            .checked_add(to_usize(csize, "record size")?)
            .filter(|e| *e <= b.len())
            .ok_or_else(|| format!("record {name} ends beyond the end of the file (truncated?)"))?;
        out.push(Record { name, range: start..end });
        at += 46 + name_len + extra_len + comment_len;
    }
    Ok(out)
}
