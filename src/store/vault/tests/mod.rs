//! The vault's tests, each run on every store back-end (sled and memory).

/// Turns `fn name(dir: &Backend)` bodies into one `#[test]` per name that runs on every
/// back-end.
macro_rules! every_backend {
    ($($name:ident),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                for backend in crate::store::testing::Backend::all() {
                    eprintln!("back-end: {}", backend.name());
                    bodies::$name(&backend);
                }
            }
        )*
    };
}

mod basics;
mod legacy;
mod rotation;
