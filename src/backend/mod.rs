//! Compute backends. The engine hands them weight views and activation
//! buffers; they know nothing of files or streaming.

pub mod cpu;

use crate::quant::GgmlType;

/// A weight matrix as the backend sees it: `rows` rows of `cols` weights in
/// `ggml_type` blocks, contiguous, row-major.
#[derive(Debug, Clone, Copy)]
pub struct Weight<'a> {
    pub ggml_type: GgmlType,
    pub rows: usize,
    pub cols: usize,
    pub data: &'a [u8],
}

impl<'a> Weight<'a> {
    pub fn row_bytes(&self) -> usize {
        self.data.len() / self.rows
    }

    pub fn row(&self, r: usize) -> &'a [u8] {
        let n = self.row_bytes();
        &self.data[r * n..(r + 1) * n]
    }
}
