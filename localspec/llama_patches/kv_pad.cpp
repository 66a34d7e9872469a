    // localspec (localspec/llama_patches): LLAMA_KV_PAD, a power of two of cells, pads the length attended over
    // further, so that passes at other context lengths keep one shape and a CUDA graph captured at one length
    // replays at the others (an editor's windows sit at many lengths). Unset (or not a power of two), upstream's.
    static const uint32_t kv_pad = [] {
        const char * env = getenv("LLAMA_KV_PAD");
        const unsigned long cells = env != nullptr ? strtoul(env, nullptr, 10) : 0;
        return cells > 0 && cells <= (1ul << 24) && (cells & (cells - 1)) == 0 ? (uint32_t) cells : 0u;
    }();
    const uint32_t n_pad_cur = std::max({n_pad, 256u, kv_pad});
