// Shapes the derive accepts beyond the plain case: unit structs, no HF fields at all, raw identifiers,
// generics (type, const, lifetime, an existing where clause), generic enums, index offsets of any integer
// type and names that shadow the generated ones.
#![deny(warnings)]

#[allow(dead_code)]
mod mocks {
    include!("../support/mocks.rs");
}

use mocks::{Linear, NotAModule, Qkv};
use neuron_spec::spec::contract::CustomModule;
use std::marker::PhantomData;

#[derive(neuron_spec::CustomModule)]
struct Unit;

#[derive(neuron_spec::CustomModule)]
struct OnlySkipped {
    #[hf(skip)]
    cache: NotAModule,
    size: usize,
}

#[derive(neuron_spec::CustomModule)]
struct Keywords {
    r#type: Linear,
    #[fused_linears(r#in, out)]
    r#mod: Linear,
    #[hf(rename = "0")]
    first: Linear,
}

trait Marker {}
impl Marker for Linear {}

#[derive(neuron_spec::CustomModule)]
struct Generic<'a, A, L: Marker, const N: usize>
where
    A: Send,
{
    #[gqa_qkv(q = q, k = k, v = v, o = o)]
    qkv: A,
    o: L,
    layers: Vec<L>,
    #[hf(skip)]
    marker: PhantomData<&'a [u8; N]>,
}

#[derive(neuron_spec::CustomModule)]
enum Either<'a, L: Marker, R>
where
    R: Send,
{
    Left(L),
    r#Right(Vec<R>),
    Optional(Option<L>,),
    Phantom(Generic<'a, Qkv, L, 2>),
}

#[derive(neuron_spec::CustomModule)]
struct Offsets {
    #[hf(rename = "a.b", index_offset = start)]
    small: Vec<Linear>,
    #[hf(index_offset = r#signed)]
    big: std::vec::Vec<Linear>,
    start: u8,
    r#signed: i64,
}

// Lower-case items with the names of the generated parameters and locals must not capture them.
#[allow(non_upper_case_globals)]
mod shadowing {
    use super::mocks::Linear;

    const prefix: &str = "shadowed";
    const out: u8 = 0;
    const src: u8 = 0;
    const device: u8 = 0;
    const specs: u8 = 0;
    const item: u8 = 0;
    const index: u8 = 0;

    #[derive(neuron_spec::CustomModule)]
    pub struct Block {
        #[fused_linears(a, b)]
        pub prefix: Linear,
        pub out: Linear,
        pub src: Option<Linear>,
        pub device: Vec<Linear>,
        pub specs: Linear,
    }

    #[derive(neuron_spec::CustomModule)]
    pub struct Stage {
        #[hf(rename = "model.layers", index_offset = first)]
        pub item: Vec<Linear>,
        pub first: usize,
    }

    #[derive(neuron_spec::CustomModule)]
    pub enum Switch {
        Item(Linear),
        Index(Stage),
    }

    pub fn consts() -> (&'static str, u8) {
        (prefix, out + src + device + specs + item + index)
    }
}

fn names(m: &impl CustomModule) -> Vec<String> {
    m.create_parameter_metadata()
        .unwrap()
        .parameters
        .into_keys()
        .collect()
}

fn main() {
    assert!(Unit.transformation_specs().unwrap().is_empty());
    assert!(names(&OnlySkipped {
        cache: NotAModule { value: 1 },
        size: 2
    })
    .is_empty());

    let k = Keywords {
        r#type: Linear::new(1),
        r#mod: Linear::new(1),
        first: Linear::new(1),
    };
    assert_eq!(names(&k), ["0.weight", "mod.weight", "type.weight"]);
    let specs = k.transformation_specs().unwrap();
    assert!(format!("{:?}", specs[0].specs[0]).contains("\"in\""));

    let g: Generic<'_, Qkv, Linear, 4> = Generic {
        qkv: Qkv::new(1),
        o: Linear::new(1),
        layers: vec![Linear::new(1)],
        marker: PhantomData,
    };
    assert_eq!(g.transformation_specs().unwrap().len(), 1);
    assert_eq!(names(&g), ["layers.0.weight", "o.weight", "qkv.weight_qkv"]);

    let b = shadowing::Block {
        prefix: Linear::new(1),
        out: Linear::new(1),
        src: None,
        device: vec![Linear::new(1)],
        specs: Linear::new(1),
    };
    assert_eq!(
        b.transformation_specs().unwrap()[0].module_fully_qualified_name,
        ""
    );
    assert_eq!(
        names(&b),
        [
            "device.0.weight",
            "out.weight",
            "prefix.weight",
            "specs.weight"
        ]
    );
    assert_eq!(shadowing::consts(), ("shadowed", 0));

    let stage = shadowing::Stage {
        item: vec![Linear::new(1), Linear::new(1)],
        first: 3,
    };
    assert_eq!(names(&stage), ["model.layers.3.weight", "model.layers.4.weight"]);
    assert_eq!(names(&shadowing::Switch::Index(stage)), ["model.layers.3.weight", "model.layers.4.weight"]);
    assert_eq!(names(&shadowing::Switch::Item(Linear::new(1))), ["weight"]);

    let e: Either<'_, Linear, Linear> = Either::r#Right(vec![Linear::new(1)]);
    assert_eq!(names(&e), ["0.weight"]);
    let e: Either<'_, Linear, Linear> = Either::Optional(Some(Linear::new(1)));
    assert_eq!(names(&e), ["weight"]);

    let o = Offsets {
        small: vec![Linear::new(1)],
        big: vec![Linear::new(1)],
        start: 255,
        r#signed: -1,
    };
    assert!(o.create_parameter_metadata().is_err());
    let o = Offsets { r#signed: 7, ..o };
    assert_eq!(names(&o), ["a.b.255.weight", "big.7.weight"]);
}
