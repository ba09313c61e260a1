# Shared types of the loyaltymetrics kernels.
from libc.stdint cimport int32_t, int64_t

# merchant_id and customer_id are int32 or int64 (SPEC §2); order_ts is an
# int64 timestamp of any unit or an int32 date32. Three independent fused
# types so that every combination is read zero-copy, without a cast.
ctypedef fused merchant_key_t:
    int32_t
    int64_t

ctypedef fused customer_key_t:
    int32_t
    int64_t

ctypedef fused order_ts_t:
    int32_t
    int64_t
