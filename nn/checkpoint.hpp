// Checkpoints in the safetensors format: an 8-byte little-endian header length, a JSON header
// ({"name": {"dtype": "F32", "shape": [...], "data_offsets": [begin, end]}, "__metadata__": {...}})
// and the raw little-endian data — readable by Python's safetensors and PyTorch.
//
// Writes are atomic (temporary file, fsync, rename, fsync of the folder): a crash leaves either the
// old file or the new one. Reads validate everything (header length, JSON, dtypes, shapes, offsets,
// sizes, and the two CRC-32s tapegrad stores in the metadata: "tapegrad.crc32" of the data,
// "tapegrad.header_crc32" of the rest of the header, metadata included) before touching any tensor,
// and raise a clear error for truncated, corrupted or mismatched files. Files without the header
// CRC (older tapegrad, other writers) are read with the data CRC alone.
#pragma once

#include <fstream>
#include <map>
#include <string>
#include <vector>

#include "core/random.hpp"
#include "nn/module.hpp"

namespace tg::nn {

class Optimizer;
class EMA;

using Metadata = std::map<std::string, std::string>;

void save_safetensors(const std::string& path, const std::vector<NamedTensor>& tensors, const Metadata& metadata = {});
// Replaces the file at `path` by `text` atomically (a temporary file in the same folder, synced,
// then renamed): a crash leaves the old content or the new one, never a mix. For run configs.
void write_file_atomically(const std::string& path, const std::string& text);
// Opens a regular file for reading (binary); `op` names the caller in errors. A folder, FIFO or
// device is refused: a folder's size reads as -1, a FIFO's open or read blocks.
std::ifstream open_regular_file(const std::string& path, const char* op);

struct SafetensorsFile {
  std::vector<NamedTensor> tensors;  // sorted by name (the order of the parsed JSON header)
  Metadata metadata;
  const Tensor* find(const std::string& name) const;
};
SafetensorsFile load_safetensors(const std::string& path);

// A module's parameters and buffers (names as in Module::state()), and the settings its modules
// report in structure() (metadata entry "tapegrad.structure"). A parameter holding NaN or inf (a
// diverged run) is an error, and the file already at `path` is kept.
void save_module(Module& m, const std::string& path, const Metadata& metadata = {});
// Loads exactly the module's tensors: every name must be present with the same shape and dtype,
// and no other tensor may be in the file. The structure() settings recorded in the file (attention
// heads, norm groups, rotary settings, activations) must be the module's: with other heads the
// tensors would fit and compute something else. Files without that record are loaded on their
// tensors alone. On any mismatch nothing is modified.
Metadata load_module(Module& m, const std::string& path);

// Everything needed to resume training bit for bit: model, optimizer state and step, the RNG
// stream, and optionally an EMA of the weights. Saving refuses a NaN or infinity in the parameters
// or the optimizer state (a diverged run keeps its last good checkpoint; buffers may hold them). Loading accepts the format
// written before the header CRC ("tapegrad-training-v1") and refuses a current one without it.
struct TrainingState {
  std::int64_t step = 0;
  Metadata metadata;  // user entries passed at save time
};
void save_training_checkpoint(const std::string& path, Module& model, Optimizer& optimizer, std::int64_t step,
                              const Generator& gen, const EMA* ema = nullptr, const Metadata& metadata = {});
TrainingState load_training_checkpoint(const std::string& path, Module& model, Optimizer& optimizer, Generator& gen,
                                       EMA* ema = nullptr);
// The step a training checkpoint (already loaded from `path`) was saved at, checked as
// load_training_checkpoint checks it: for a run that must know it before resuming.
std::int64_t training_checkpoint_step(const SafetensorsFile& file, const std::string& path);

}  // namespace tg::nn
