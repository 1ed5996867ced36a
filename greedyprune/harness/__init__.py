"""The training harness the drivers share: data sets and loaders (data), training, fine-tuning,
evaluation and BN re-estimation (training), the model a command names and the cache of trained
models (model_source), parameters / FLOPs / latency (measure), resumable checkpoints with RNG
states (checkpoint). Below the drivers, above models and ops."""
