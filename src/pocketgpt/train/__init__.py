"""The training layer: tokenized datasets and batches (batches), AdamW and schedules (optim), the one training
loop with evaluation and exactly resumable checkpoints (loop, checkpoint), and microgpt's recipe on the fast
engine (reproduce)."""

from pocketgpt.train.batches import (
    Batches,
    Dataset,
    dataset_of,
    eval_batches,
    load_dataset,
    pad_documents,
    tokenize,
)
from pocketgpt.train.checkpoint import (
    Checkpoint,
    CheckpointError,
    CheckpointExists,
    check_can_save,
    checkpoint_info,
    is_checkpoint,
    load_checkpoint,
    save_checkpoint,
)
from pocketgpt.train.evaluate import evaluate, perplexity
from pocketgpt.train.loop import (
    FINETUNE,
    TRAIN_DEFAULTS,
    TrainSettings,
    adamw_step,
    check_training_memory,
    decay_mask,
    default_workers,
    loop,
    make_optimizer,
    resume_settings,
    settings_for,
    train,
)

__all__ = ["Batches", "Checkpoint", "CheckpointError", "CheckpointExists", "Dataset", "FINETUNE", "TRAIN_DEFAULTS",
           "TrainSettings", "adamw_step", "check_can_save", "check_training_memory", "checkpoint_info", "dataset_of",
           "decay_mask", "default_workers", "eval_batches", "evaluate", "is_checkpoint", "load_checkpoint",
           "load_dataset", "loop", "make_optimizer", "pad_documents", "perplexity", "resume_settings",
           "save_checkpoint", "settings_for", "tokenize", "train"]
