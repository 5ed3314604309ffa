"""Training of the bundled models: ``medsr train CONFIG.toml ...`` (or ``python -m MedSREnhanceLib.training.train``).

A TOML config holds four typed tables ([model], [data], [degrade], [train]; see the dataclasses below and
configs/*.toml), optionally [randomise] (domain randomisation) and [adversarial]. Every volume it names must be
recorded in configs/data_sources.toml (source, licence, group); `medsr train --leave-out GROUP` trains without
one source group for leave-one-source-out validation. Pairs come from the physical degradations in ``simulate`` exactly as the engine and the
benchmark see them, normalised with ``normalise.forward`` computed on the degraded input (as at inference).
Patches are drawn with probability growing with the target's gradient magnitude; augmentation = flips, axis
permutations (where the degradation is isotropic), intensity scaling, random degradation parameters.
Loss = L1 + ``ssim_weight`` * (1 - SSIM). Checkpoints (model, optimiser, step, RNG states) every
``checkpoint_minutes`` to ``run_dir``; ``resume=True`` continues from the last one. The result is
``weights/<name>.pt`` (fp32 state_dict) plus ``weights/<name>.json`` (model card with the resolved config).

Files: ``config`` (the TOML tables), ``data_sources`` (the sources file), ``randomise`` (domain
randomisation), ``pairs`` (training volumes, patch sampling, augmentation, the PairSource
base), ``sources_mr`` and ``sources_ct`` (one pair source per task), ``losses``, ``cards`` (model cards), ``loop``
(the training loop), ``train`` (the command line). A new task is a new PairSource plus its entry in
``loop.SOURCES``.
"""
