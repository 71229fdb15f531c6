//! What the in-memory readers (IDX, CIFAR) hand back, before it becomes a
//! [`super::Dataset`]: a leaf, so that the readers never import the dataset.

/// What the in-memory readers hand back: both splits plus class names.
pub(crate) struct MemoryData {
    pub classes: Vec<String>,
    pub channels: usize,
    pub size: usize,
    pub train: (Vec<u8>, Vec<usize>),
    pub test: (Vec<u8>, Vec<usize>),
}
