"""One library function per pipeline stage: ``pnoc.steps.<stage>.run``.

Each module reads top to bottom as the stage's whole work (IRN's ``step.train_cam.run``):
typed config and data in, outputs and figures back. The DVC stage modules
(``pnoc_pipelines.<stage>``), ``pnoc ablate-cams`` and the sweep objectives call these and add
only their own I/O (final paths, atomic renames) and tracking (MLflow).

==================  ==========================================================
stage               library call
==================  ==========================================================
generate            :func:`pnoc.data.synthetic.generate_synthetic`
prepare             :func:`pnoc.steps.prepare.run`
train_oc            :func:`pnoc.steps.train_cam.run` (``OCParams``)
train_cam           :func:`pnoc.steps.train_cam.run` (``CamParams``)
cams                :func:`pnoc.steps.cams.run`
train_saliency      :func:`pnoc.steps.train_saliency.run`
saliency            :func:`pnoc.steps.saliency.run`
train_affinity      :func:`pnoc.steps.train_affinity.run`
pseudo_masks        :func:`pnoc.steps.pseudo_masks.run`
train_segmentation  :func:`pnoc.steps.train_segmentation.run`
evaluate            :func:`pnoc.steps.evaluate.run`
==================  ==========================================================

How a step runs (seed, device, workers, checkpoint, callbacks) is a
:class:`pnoc.engine.Runtime`. Every training step reseeds the global generators from
``runtime.seed`` before it builds anything, so the same params and seed train the same network
whichever entry point ran it and whatever ran before it in the process.
"""
