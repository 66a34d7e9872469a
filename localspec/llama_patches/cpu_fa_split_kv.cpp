    // localspec (localspec/llama_patches): GGML_CPU_FA_SPLIT_KV=0 keeps a one-query pass off the split-KV path,
    // which sums a query's attention in per-thread chunks of the context and so in another order than a pass of
    // several queries: with it off, a verify pass's rows equal one-token passes' bit for bit wherever the matrix
    // kernels agree too (greedy speculative output is then the target alone's). Unset (or not 0): upstream's.
    static const bool split_kv = [] {
        const char * env = getenv("GGML_CPU_FA_SPLIT_KV");
        return env == nullptr || atoi(env) != 0;
    }();
    const bool use_split_kv_path = split_kv && !use_ref && (neq1 == 1 && neq3 == 1) && kv_is_f32_or_f16 && (k->type == v->type) && q->type == GGML_TYPE_F32 && nek1 >= 512;
