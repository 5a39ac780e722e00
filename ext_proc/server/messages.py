"""Small conversions between ext_proc messages and plain data, shared by the router-level and
the upstream-level exchanges."""

from __future__ import annotations

from typing import Any

from envoy.config.core.v3 import base_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb


def headers_to_dict(hmap: Any) -> dict[str, list[str]]:   # an Envoy HeaderMap (untyped stubs)
    out: dict[str, list[str]] = {}
    for h in hmap.headers:
        value = h.raw_value.decode("utf-8", "replace") if h.raw_value else h.value
        out.setdefault(h.key.lower(), []).append(value)
    return out


def attributes_of(req: pb.ProcessingRequest) -> dict[str, str]:
    out: dict[str, str] = {}
    st = req.attributes.get("envoy.filters.http.ext_proc")
    if st is None:
        return out
    for k, v in st.fields.items():
        kind = v.WhichOneof("kind")
        if kind == "string_value":
            out[k] = v.string_value
        elif kind == "bool_value":
            out[k] = "true" if v.bool_value else "false"
        elif kind == "number_value":
            out[k] = str(int(v.number_value)) if v.number_value.is_integer() else str(v.number_value)
    return out


def set_header(key: str, value: str) -> base_pb2.HeaderValueOption:
    return base_pb2.HeaderValueOption(
        header=base_pb2.HeaderValue(key=key, raw_value=value.encode()),
        append_action=base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD)
