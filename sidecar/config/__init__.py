"""Settings: everything the service reads from files, the environment and flags.

- :mod:`sidecar.config.settings`: the config file, ``VLLM_SIDECAR_*`` and flags -> :class:`Config`
- :mod:`sidecar.config.targets`: a Prometheus ``file_sd`` targets file (central mode)
- :mod:`sidecar.config.reload`: the watcher that reloads the targets file
- :mod:`sidecar.config.web`: the exporter-toolkit web config (TLS, basic auth, headers)
"""
