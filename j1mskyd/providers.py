"""The provider side of the plugin contract, under the name plugins have always imported.

The contract itself (these types, the Protocols, the API version, what a plugin may and
may not do) is in :mod:`j1mskyd.plugin_api`; this module re-exports its provider names so
``from j1mskyd.providers import CompletionResult`` keeps working for drop-in plugins.
"""

from __future__ import annotations

from .plugin_api import (
    ERROR_KINDS,
    RETRYABLE_KINDS,
    CompletionRequest,
    CompletionResult,
    Provider,
    ProviderError,
    ProviderSettings,
    StreamingProvider,
)

__all__ = ["ERROR_KINDS", "RETRYABLE_KINDS", "CompletionRequest", "CompletionResult", "Provider",
           "ProviderError", "ProviderSettings", "StreamingProvider"]
