"""The providers ledgergate knows, by the name used in routes, records, policies and configuration."""

from __future__ import annotations

from enum import StrEnum


class Provider(StrEnum):
    """A provider's name. A StrEnum, so records, policy input and JSON keep the plain string."""

    OPENAI = "openai"
    AZURE = "azure"
    ANTHROPIC = "anthropic"
    GEMINI = "gemini"
    BEDROCK = "bedrock"
    MISTRAL = "mistral"
