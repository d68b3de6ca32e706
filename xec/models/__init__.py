"""XEC neural networks: building blocks, the face-aware encoder, MAE, inpainter and regressor."""
