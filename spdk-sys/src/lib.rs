//! Raw bindings to SPDK. The build script locates SPDK; the generated
//! bindings and the bdev module that uses them are built with the `spdk`
//! feature of the pcache crate.
