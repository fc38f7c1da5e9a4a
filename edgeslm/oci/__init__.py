"""Bundles in OCI registries (docs/oci.md): one blob per bundle file, the manifest as the config.

``reference`` parses ``oci://HOST[:PORT]/REPO[:TAG][@sha256:…]``; ``registry_auth`` finds credentials
(Docker config, credential helpers, the environment) and answers token challenges; ``registry_client``
speaks the OCI distribution API over httpx; ``bundle_layout`` maps a bundle to an OCI image manifest and
back; ``push``, ``pull`` and ``install`` are what the commands call.
"""
