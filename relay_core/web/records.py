"""What the page stores: admin web tokens (only their keyed hashes) and signed-in sessions."""

from __future__ import annotations

import time
from enum import StrEnum

from pydantic import BaseModel
from pydantic import Field

from relay_core.models import new_id


class WebToken(BaseModel):
    """An admin's token for the team dashboard; the secret itself is shown once and never stored."""

    id: str = Field(default_factory=new_id)
    name: str
    token_hash: str
    hint: str = Field(description="first characters of the token, enough to recognise it, not to use it")
    created_at: float = Field(default_factory=time.time)


class Viewer(StrEnum):
    KEY = "key"  # a team key's holder: that key's own view only
    ADMIN = "admin"  # a web token's holder: the team dashboard


class WebSession(BaseModel):
    """A signed-in visitor: who, as which kind of viewer. Re-checked against the key or token on every view."""

    viewer: Viewer
    subject_id: str  # the team key's or web token's id
    created_at: float = Field(default_factory=time.time)
