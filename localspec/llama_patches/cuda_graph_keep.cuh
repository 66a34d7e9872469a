    // localspec (localspec/llama_patches): GGML_CUDA_GRAPH_KEEP_CALLS=N ages the cached graphs by this context's
    // graph lookups (a few a pass) instead of by wall time: a graph goes once N lookups passed without it. Upstream
    // drops every graph unused for 10 s, so a pause between requests cost each pass size its graph (captured anew,
    // after an uncaptured pass, at the next request). Unset or not above 0: upstream's.
    int64_t graph_lookups = 0;

    ggml_cuda_graph * cuda_graph(const void * first_node_ptr) {
        static const int64_t keep_calls = [] {
            const char * env = getenv("GGML_CUDA_GRAPH_KEEP_CALLS");
            const long long calls = env != nullptr ? atoll(env) : 0;
            return calls > 0 ? (int64_t) calls : (int64_t) 0;
        }();
        const int64_t time_now = keep_calls > 0 ? ++graph_lookups : ggml_time_us();
        const int64_t keep_for = keep_calls > 0 ? keep_calls : (int64_t) 10'000'000;

        // sweep every 5s, evicting cuda graphs unused for >=10s (localspec: or half of / all of keep_calls lookups)
        if (time_now - last_graph_eviction_sweep >= keep_for / 2) {
            last_graph_eviction_sweep = time_now;
            for (auto it = cuda_graphs.begin(); it != cuda_graphs.end(); ) {
                if (time_now - it->second->last_used_time >= keep_for) {
