//! The bindings generator, built from the same uniffi version as the library it reads
//! (`uniffi-bindgen generate --library libtee_risk_ffi.so --language python|kotlin|swift`).

fn main() {
    uniffi::uniffi_bindgen_main()
}
