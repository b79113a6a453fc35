//! With the KV cache on disk the token loop still allocates nothing: its
//! block buffers, new rows and tails are allocated at start (as
//! tests/no_alloc.rs, the cache offloaded; 48 tokens cross block
//! boundaries and tail flushes).

mod common;

use flea::kv_disk::KvOffload;

#[global_allocator]
static GLOBAL: common::no_alloc::Counting = common::no_alloc::Counting;

#[test]
fn decode_steps_with_kv_on_disk_allocate_nothing() {
    common::no_alloc::assert_decode_allocates_nothing(KvOffload::On, 48);
}
