"""Every training key, its default and its meaning. Configs start here and set what differs.

Override any key on the command line: ``--config.learning_rate=0.05``,
``--config.model_options.zero_init_residual=true``, ``--config.lr_boundaries=[30,60]``.
"""

from __future__ import annotations

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    """The defaults: ResNet-18 (CIFAR stem) on CIFAR-10, SGD, cosine schedule, float32."""
    config = ml_collections.ConfigDict()
    config.name = ""  # set by the loader: the config's file name, e.g. 'resnet18_cifar'

    # --- Model ---

    config.model = "resnet18_cifar"  # a name from resnet_flax.list_models()
    # Extra create_model options (e.g. zero_init_residual); num_classes, dtype and the
    # BatchNorm axis come from the keys below, not from here.
    config.model_options = ml_collections.ConfigDict()
    # '' = random init; a weights tag (resnet34.tv_in1k), a torchvision .pth/.safetensors
    # file or a run's checkpoint directory, on any filesystem resnet_flax/io/paths.py serves.
    config.pretrained = ""
    config.freeze_backbone = False  # True: train the head only (needs pretrained)

    # --- Data ---

    config.dataset = "cifar10"  # cifar10, cifar100, imagenet2012, folder, digits, fake
    config.data_dir = ""  # '' = the data set's default location (TFDS, scikit-learn)
    config.train_split = "train"  # TFDS-style slices work: 'train[:45000]'
    config.eval_split = "test"  # evaluated every eval_every_epochs, and by --eval_only
    config.image_size = 32  # the side of the square training and evaluation crops
    config.num_classes = 10  # 0 = the data set's own class count (folder: the class folders)
    config.augment = True  # CIFAR-size: pad-4 crop + flip; larger: random-resized crop + flip
    config.flip_tta = False  # evaluation averages the softmax of the image and its mirror
    # Decoding processes for streamed data sets: -1 sizes them from the host's cores and
    # local devices (data.stream.default_num_workers); 0 decodes in the trainer's process.
    config.num_workers = -1
    # Streamed data sets: an image that cannot be decoded stops training (after saving) unless
    # this is on: then a training example takes the next decodable one's place (as timm's
    # datasets do) and an evaluation example is left out, each named in a warning with a count.
    config.skip_bad_images = False

    # --- Optimisation ---

    config.num_epochs = 200  # the schedule counts in epochs
    config.batch_size = 128  # global: split over every device of every host
    config.eval_batch_size = 256  # global
    config.optimizer = "sgd"  # sgd | adamw
    config.learning_rate = 0.1  # peak rate, reached after warmup
    config.momentum = 0.9  # SGD only
    config.nesterov = False  # SGD only
    config.weight_decay = 5e-4  # SGD: coupled L2 as torch.optim.SGD; AdamW: decoupled
    config.decay_norm_and_bias = True  # False: no decay on BatchNorm scale/bias and biases
    config.label_smoothing = 0.0  # 0.1 spreads 10% of each target over all classes
    config.lr_schedule = "cosine"  # cosine | piecewise | onecycle | constant
    config.warmup_epochs = 0.0  # linear warmup from 0 (onecycle: its rising phase)
    config.lr_boundaries = ()  # piecewise: epochs at which the rate is multiplied ...
    config.lr_decay_factor = 0.1  # ... by this factor
    config.dtype = "float32"  # float32 | bfloat16 (compute; parameters stay float32)
    config.sync_batch_norm = True  # BatchNorm statistics over the global batch (False: per device)
    # The model's kernels (its impl): 'auto' runs the fastest for the backend (on a CPU the
    # CPU kernels: oneDNN convolutions, a fused BatchNorm), 'plain' plain XLA everywhere,
    # 'cpu' the CPU kernels. The numbers agree to float32 round-off.
    config.kernels = "auto"
    # Join a cluster with jax.distributed.initialize() and no arguments, letting JAX find it
    # (Cloud TPU pods, GKE, SLURM, Open MPI); on TPU hosts it is tried anyway, and the
    # JAX_COORDINATOR_ADDRESS/JAX_NUM_PROCESSES/JAX_PROCESS_ID variables always count.
    config.distributed = False
    config.seed = 0  # initialisation, shuffling, augmentation and dropout

    # --- Checkpoints, evaluation, logging ---

    config.checkpoint = ""  # --eval_only: '' = the latest checkpoint in the workdir, or a path
    config.keep_checkpoints = 2  # the latest N ...
    config.keep_best = 1  # ... plus the best N by eval accuracy
    config.checkpoint_every_steps = 0  # 0 = at the end of each epoch
    config.eval_every_epochs = 1  # evaluate on eval_split every N epochs and at the end
    config.log_every_steps = 100  # a train line in metrics.jsonl every N steps
    config.max_steps = 0  # stop after this many steps (0 = no limit; tests and benchmarks)
    return config
