"""The KFP pipeline, its CLI and presets."""
