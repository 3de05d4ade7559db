"""The DFC-VAE example as a package (Hou et al., WACV 2017): data, model, objective, training, shipped models,
gallery and report. Built on perceptloss' public API only.

Run the programs through the scripts beside this package (``python examples/dfcvae/train.py ...``, which puts
``examples/dfcvae`` on the path as Python does for any script), or as modules from ``examples/dfcvae``
(``python -m dfcvae.train ...``). In your own code, with ``examples/dfcvae`` on ``PYTHONPATH``::

    from dfcvae.pretrained import load_pretrained
    model = load_pretrained("vae123")
"""
