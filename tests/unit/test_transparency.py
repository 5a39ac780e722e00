

def test_marker_token_maps_each_unsafe_character_to_underscore():
    """The header token (provider, model, policy): printable ASCII except ;,=\"\\ kept, every other
    character one '_', at most 128 characters, 'unknown' when empty (against the plain definition)."""
    import random

    from ext_proc.streaming.transparency import _token

    def reference(value):
        safe = {chr(c) for c in range(0x21, 0x7F)} - set(';,="\\')
        text = "".join(ch if ch in safe else "_" for ch in str(value or "unknown"))[:128]
        return text or "unknown"

    rnd = random.Random(7)
    alphabet = [chr(c) for c in range(0x250)] + ["\ud800", "\U0001f600", "é", "\u200b"]
    for _ in range(3000):
        value = "".join(rnd.choice(alphabet) for _ in range(rnd.randrange(0, 300)))
        assert _token(value) == reference(value)
    for value in (None, "", 0, 12, "gpt-4o", "a;b=c", "x" * 500):
        assert _token(value) == reference(value)
