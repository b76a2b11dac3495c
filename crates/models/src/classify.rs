//! Classifiers on features: nearest subspace and k-nearest neighbours with cosine similarity.
