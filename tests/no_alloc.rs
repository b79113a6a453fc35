//! The token loop allocates nothing: a counting global allocator watches
//! decode steps of a streamed run (loader thread included).

mod common;

use flea::kv_disk::KvOffload;

#[global_allocator]
static GLOBAL: common::no_alloc::Counting = common::no_alloc::Counting;

#[test]
fn decode_steps_allocate_nothing() {
    common::no_alloc::assert_decode_allocates_nothing(KvOffload::Off, 24);
}
