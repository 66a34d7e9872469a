// localspec (localspec/llama_patches): GGML_CUDA_GRAPH_KEY picks what keys a context's cached CUDA graphs. Unset
// or "node": the graph's first node alone, as upstream, so passes of every size share one graph and each change
// of size runs the next passes uncaptured until two in a row match. "shape": also the node count and the first and
// last nodes' sizes, so each pass size keeps a graph of its own (a speculative decoder alternates sizes).
static const void * ggml_cuda_graph_get_key(ggml_cgraph * cgraph) {
    static const bool by_shape = [] {
        const char * env = getenv("GGML_CUDA_GRAPH_KEY");
        return env != nullptr && strcmp(env, "shape") == 0;
    }();
    uint64_t key = (uint64_t) (uintptr_t) cgraph->nodes[0];
    if (by_shape) {
        const ggml_tensor * last = cgraph->nodes[cgraph->n_nodes - 1];
        key = (key ^ (uint64_t) cgraph->n_nodes) * UINT64_C(0x100000001b3);
        for (int i = 0; i < GGML_MAX_DIMS; ++i) {
            key = (key ^ (uint64_t) cgraph->nodes[0]->ne[i]) * UINT64_C(0x100000001b3);
            key = (key ^ (uint64_t) last->ne[i]) * UINT64_C(0x100000001b3);
        }
    }
    return (const void *) (uintptr_t) key;
}
