"""`localspec bench`: measure speed, acceptance and losslessness per workload and mode, optionally against
llama.cpp's own llama-server in the same run."""
