"""Feature-space geometry that heads and analysis share: FAISS indexes and nearest neighbours
(`index`), group means, pair differences, directions and covariance norms (`directions`)."""
