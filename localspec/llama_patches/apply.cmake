# Included at ggml's project() (CMAKE_PROJECT_ggml_INCLUDE, from localspec/build_flags.py): localspec's changes to
# the llama.cpp sources being built. Each is switched on at run time by an environment variable and behaves as
# upstream without it; a source that does not read as expected is built as is.
set(LOCALSPEC_PATCHES "${CMAKE_CURRENT_LIST_DIR}")

# localspec_patch(NAME FILE MARKER OLD NEW_FILE): in FILE (a path from ggml's source folder) replaces the text OLD
# by the text of NEW_FILE (in this folder), once: a FILE holding MARKER is patched already.
function(localspec_patch name file marker old new_file)
    set(_file "${CMAKE_CURRENT_SOURCE_DIR}/${file}")
    if(EXISTS "${_file}")
        file(READ "${_file}" _source)
    else()
        set(_source "")
    endif()
    string(FIND "${_source}" "${marker}" _done)
    string(FIND "${_source}" "${old}" _at)
    if(_done GREATER -1)
        message(STATUS "localspec: ${name} already patched")
    elseif(_at EQUAL -1)
        message(WARNING "localspec: ${name}: the code to change was not found as expected in ${_file}: built as is")
    else()
        file(READ "${LOCALSPEC_PATCHES}/${new_file}" _new)
        string(REPLACE "${old}" "${_new}" _source "${_source}")
        file(WRITE "${_file}" "${_source}")
        message(STATUS "localspec: ${name} patched")
    endif()
endfunction()

# A captured CUDA graph per pass size where GGML_CUDA_GRAPH_KEY=shape (cuda_graph_key.cu).
localspec_patch("CUDA graph key" src/ggml-cuda/ggml-cuda.cu GGML_CUDA_GRAPH_KEY
    "static const void * ggml_cuda_graph_get_key(ggml_cgraph * cgraph) {\n    return cgraph->nodes[0];\n}"
    cuda_graph_key.cu)
# The KV length a pass attends over padded to LLAMA_KV_PAD cells (kv_pad.cpp).
localspec_patch("KV padding" ../src/llama-kv-cache.cpp LLAMA_KV_PAD
    "    const uint32_t n_pad_cur = std::max(n_pad, 256u);\n"
    kv_pad.cpp)
# Cached CUDA graphs aged by lookups, not seconds, where GGML_CUDA_GRAPH_KEEP_CALLS is set (cuda_graph_keep.cuh).
localspec_patch("CUDA graph keep" src/ggml-cuda/common.cuh GGML_CUDA_GRAPH_KEEP_CALLS
    "    ggml_cuda_graph * cuda_graph(const void * first_node_ptr) {\n        const int64_t time_now = ggml_time_us();\n\n        // sweep every 5s, evicting cuda graphs unused for >=10s\n        if (time_now - last_graph_eviction_sweep >= 5'000'000) {\n            last_graph_eviction_sweep = time_now;\n            for (auto it = cuda_graphs.begin(); it != cuda_graphs.end(); ) {\n                if (time_now - it->second->last_used_time >= 10'000'000) {\n"
    cuda_graph_keep.cuh)
# A one-query pass's CPU attention kept off the split-KV path where GGML_CPU_FA_SPLIT_KV=0 (cpu_fa_split_kv.cpp).
localspec_patch("CPU attention split" src/ggml-cpu/ops.cpp GGML_CPU_FA_SPLIT_KV
    "    const bool use_split_kv_path = !use_ref && (neq1 == 1 && neq3 == 1) && kv_is_f32_or_f16 && (k->type == v->type) && q->type == GGML_TYPE_F32 && nek1 >= 512;\n"
    cpu_fa_split_kv.cpp)
