"""Wire formats shared by providers and streaming: server-sent events, the AWS event stream and
streamed JSON arrays. Framing only (bytes in, frames out); no provider knowledge."""
