"""Training: one Trainer (loop.py) shared by the MAE, inpainter and regressor stages.

Stage-specific code (stages.py) only supplies the model, the loss and the validation metrics;
everything else (optimizer groups, schedules, EMA, AMP, checkpoints, resume, DDP, MLflow) lives
here once.
"""
