"""Deployment: ONNX export of trained models (`xec export`), their metadata contract
(`onnx_meta`) and streaming inference on ROOT files with ONNX Runtime (`xec infer`)."""
