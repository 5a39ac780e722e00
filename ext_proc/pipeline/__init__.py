"""The request flow: the four fields (identity, role, classification, decision) composed into
one verdict per request and one outcome per response. Sans-I/O: the gRPC adapter in
ext_proc.server awaits the I/O (identity look-ups, rate-limit counters, audit commits) around it.
"""
