"""Settings: everything the service reads from files, the environment and flags.

- :mod:`sidecar.config.files`: the shared tools of every settings reader (capped reads, the one
  YAML loader with line numbers, ``FILE:LINE`` errors, unknown keys, the label-name rule, file
  stamps) and :class:`~sidecar.config.files.ConfigError`
- :mod:`sidecar.config.settings`: the config file, ``VLLM_SIDECAR_*`` and flags -> ``Config``
- :mod:`sidecar.config.targets`: a Prometheus ``file_sd`` targets file (central mode)
- :mod:`sidecar.config.reload`: the watcher that reloads the targets file
- :mod:`sidecar.config.web`: the exporter-toolkit web config file (TLS, basic auth, headers);
  serving it per connection and per request is :mod:`sidecar.webauth`, beside the server
"""
