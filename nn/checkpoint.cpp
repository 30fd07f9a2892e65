#include "nn/checkpoint.hpp"

#include <fcntl.h>
#include <unistd.h>
#include <zlib.h>

#include <algorithm>
#include <atomic>
#include <charconv>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <optional>
#include <set>
#include <unordered_set>
#include <utility>
#include <nlohmann/json.hpp>

#include "core/autograd.hpp"
#include "nn/optim.hpp"

namespace tg::nn {
namespace {

using json = nlohmann::json;

constexpr std::uint64_t kMaxHeaderBytes = 100u << 20;
constexpr const char* kCrcKey = "tapegrad.crc32";
// The payload CRC above leaves the header unchecked, and a flipped digit in a metadata value (a
// training checkpoint's step, RNG offset, loss sums) would resume silently. So the header carries
// a second CRC-32: of the header's canonical JSON (nlohmann's compact dump, keys sorted) without
// this one entry. Canonical rather than the bytes as written, so that the writer can compute it
// before inserting it and a reader need not care about whitespace; it covers the tensor table and
// every other metadata entry, the payload CRC included. Files without it (written by tapegrad
// before it existed, or by other tools) are still read: their payload CRC still applies.
constexpr const char* kHeaderCrcKey = "tapegrad.header_crc32";
// Training checkpoints: v2 always has the header CRC (so that a corrupted key name cannot pass a
// new file off as one written before it existed); v1 files (without it) are still read.
constexpr const char* kTrainingFormat = "tapegrad-training-v2";
constexpr const char* kTrainingFormatV1 = "tapegrad-training-v1";
// The modules' structure() (attention heads, norm groups, rotary settings: what tensor shapes do
// not show), as a JSON object {path: "Type(settings)"}. Files without it load unchecked.
constexpr const char* kStructureKey = "tapegrad.structure";

const char* safetensors_dtype(DType t) {
  switch (t) {
    case DType::f32: return "F32";
    case DType::f64: return "F64";
    case DType::i32: return "I32";
    case DType::i64: return "I64";
    case DType::boolean: return "BOOL";
  }
  return "?";
}

std::optional<DType> parse_dtype(const std::string& s) {
  if (s == "F32") return DType::f32;
  if (s == "F64") return DType::f64;
  if (s == "I32") return DType::i32;
  if (s == "I64") return DType::i64;
  if (s == "BOOL") return DType::boolean;
  return std::nullopt;
}

// Replaces `path` by the concatenation of `chunks`: written to a temporary file in the same
// folder, synced, then renamed over the target (a crash leaves the old file or the new one).
struct Chunk {
  const void* p;
  std::size_t n;
};
void write_chunks_atomically(const std::string& path, const std::vector<Chunk>& chunks, const char* op) {
  namespace fs = std::filesystem;
  const fs::path target(path);
  const fs::path dir = target.has_parent_path() ? target.parent_path() : fs::path(".");
  TG_CHECK(fs::is_directory(dir), "{}: folder '{}' {}", op, dir.string(),
           fs::exists(dir) ? "is not a folder (a file of that name is in the way)" : "does not exist");
  // The rename would replace whatever is there: a device, FIFO or directory is refused, not replaced.
  std::error_code ec;
  const fs::file_status existing = fs::status(target, ec);
  TG_CHECK(!fs::exists(existing) || fs::is_regular_file(existing), "{}: '{}' exists and is not a regular file", op, path);
  // A temporary name of its own per call (process id, then a per-process counter; O_EXCL skips a
  // leftover of an earlier process with the same id): concurrent saves to one path must not share it.
  static std::atomic<std::uint64_t> counter{0};
  std::string tmp;
  int fd = -1;
  for (int attempt = 0; attempt < 100 && fd < 0; ++attempt) {
    tmp = (dir / fmt::format("{}.tmp-{}-{}", target.filename().string(), ::getpid(), counter.fetch_add(1))).string();
    fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    if (fd < 0 && errno != EEXIST) break;
  }
  TG_CHECK(fd >= 0, "{}: cannot create '{}': {}", op, tmp, std::strerror(errno));
  auto write_all = [&](const void* p, std::size_t n) {
    const char* c = static_cast<const char*>(p);
    while (n > 0) {
      const ssize_t w = ::write(fd, c, n);
      if (w < 0 && errno == EINTR) continue;
      if (w <= 0) {
        const int err = errno;
        ::close(fd);
        ::unlink(tmp.c_str());
        TG_FAIL("{}: writing '{}' failed: {}", op, tmp, std::strerror(err));
      }
      c += w;
      n -= static_cast<std::size_t>(w);
    }
  };
  for (const Chunk& chunk : chunks) write_all(chunk.p, chunk.n);
  const int synced = ::fsync(fd), sync_err = errno;
  const int closed = ::close(fd), close_err = errno;  // closed whether or not fsync failed
  if (synced != 0 || closed != 0) {
    ::unlink(tmp.c_str());
    TG_FAIL("{}: flushing '{}' failed: {}", op, tmp, std::strerror(synced != 0 ? sync_err : close_err));
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    const int err = errno;
    ::unlink(tmp.c_str());
    TG_FAIL("{}: renaming '{}' to '{}' failed: {}", op, tmp, path, std::strerror(err));
  }
  if (const int dfd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC); dfd >= 0) {
    ::fsync(dfd);  // make the rename itself durable
    ::close(dfd);
  }
}

std::uint32_t crc_of(const std::string& text) {
  return static_cast<std::uint32_t>(crc32(crc32(0L, Z_NULL, 0), reinterpret_cast<const Bytef*>(text.data()),
                                          static_cast<uInt>(text.size())));  // headers are < 100 MiB
}

// The CRC of a header without its kHeaderCrcKey entry (see kHeaderCrcKey).
std::uint32_t header_crc(json header) {
  if (auto m = header.find("__metadata__"); m != header.end() && m->is_object()) m->erase(kHeaderCrcKey);
  return crc_of(header.dump());
}

std::uint32_t crc_of(const std::vector<Tensor>& data) {
  uLong crc = crc32(0L, Z_NULL, 0);
  for (const Tensor& t : data) {
    const auto* p = static_cast<const Bytef*>(t.raw_data());
    std::size_t n = static_cast<std::size_t>(t.numel()) * t.element_size();
    while (n > 0) {  // zlib takes 32-bit lengths
      const uInt chunk = static_cast<uInt>(std::min<std::size_t>(n, 1u << 30));
      crc = crc32(crc, p, chunk);
      p += chunk;
      n -= chunk;
    }
  }
  return static_cast<std::uint32_t>(crc);
}

// Finds a key that appears twice in one JSON object. The parser keeps the last one silently: a
// second __metadata__ could drop the checksum, a second tensor entry hide the first.
// Only the two levels safetensors defines (tensor names and __metadata__; the fields of an entry)
// are tracked, so a deeply nested header costs no memory here.
struct DuplicateKeyCheck : json::json_sax_t {
  static constexpr std::size_t kLevels = 2;
  // A safetensors header nests 3 levels (header, entry, shape). Deeper input is refused before it
  // is parsed into a tree: copying or printing a tree nested a million levels deep (a few MiB of
  // '[') recurses once per level and overflows the stack.
  static constexpr std::size_t kMaxNesting = 16;
  std::vector<std::set<std::string>> keys;  // per open object of the first kLevels
  std::size_t depth = 0;                    // open objects
  std::size_t nesting = 0;                  // open objects and arrays
  std::string duplicate;
  bool too_deep = false;
  bool null() override { return true; }
  bool boolean(bool) override { return true; }
  bool number_integer(number_integer_t) override { return true; }
  bool number_unsigned(number_unsigned_t) override { return true; }
  bool number_float(number_float_t, const string_t&) override { return true; }
  bool string(string_t&) override { return true; }
  bool binary(binary_t&) override { return true; }
  bool open() {
    too_deep = ++nesting > kMaxNesting;
    return !too_deep;  // stop at once
  }
  bool start_object(std::size_t) override {
    if (++depth <= kLevels) keys.emplace_back();
    return open();
  }
  bool key(string_t& k) override {
    if (depth <= kLevels && !keys.back().insert(k).second) duplicate = k;
    return duplicate.empty();  // stop at the first one
  }
  bool end_object() override {
    if (depth-- <= kLevels) keys.pop_back();
    --nesting;
    return true;
  }
  bool start_array(std::size_t) override { return open(); }
  bool end_array() override {
    --nesting;
    return true;
  }
  bool parse_error(std::size_t, const std::string&, const json::exception&) override { return false; }
};

// Whether `s` is well-formed UTF-8 (the header is JSON text: names and metadata must be).
bool valid_utf8(const std::string& s) {
  for (std::size_t i = 0; i < s.size();) {
    const auto c = static_cast<unsigned char>(s[i]);
    const int extra = c < 0x80 ? 0 : (c >> 5) == 0x6 ? 1 : (c >> 4) == 0xe ? 2 : (c >> 3) == 0x1e ? 3 : -1;
    if (extra < 0 || s.size() - i <= static_cast<std::size_t>(extra)) return false;  // a bad lead byte, or cut off
    std::uint32_t cp = extra == 0 ? c : c & (0x3f >> extra);
    for (int k = 1; k <= extra; ++k) {
      const auto b = static_cast<unsigned char>(s[i + static_cast<std::size_t>(k)]);
      if ((b >> 6) != 0x2) return false;
      cp = (cp << 6) | (b & 0x3f);
    }
    // Overlong forms, surrogates and values past U+10FFFF are not UTF-8 either.
    static constexpr std::uint32_t kMin[] = {0, 0x80, 0x800, 0x10000};
    if (cp < kMin[extra] || (cp >= 0xd800 && cp <= 0xdfff) || cp > 0x10ffff) return false;
    i += static_cast<std::size_t>(extra) + 1;
  }
  return true;
}

// Refuses to write `path` when a trained tensor holds NaN or inf: a diverged run must not replace
// the last good file, and a model saved with NaN weights could only produce NaN.
void refuse_diverged(const std::vector<NamedTensor>& trained, const std::string& path, const std::string& when) {
  for (const NamedTensor& t : trained)
    if (const std::optional<double> bad = first_non_finite_value(t.tensor))
      TG_FAIL("save: not writing '{}'{}: tensor '{}' holds {} (the run diverged; try a smaller learning rate). "
              "The file already there, if any, is kept",
              path, when, t.name, std::isnan(*bad) ? std::fabs(*bad) : *bad);  // "nan", not fmt's "-nan"
}

// A metadata entry of a training checkpoint.
const std::string& training_entry(const SafetensorsFile& file, const std::string& path, const char* key) {
  auto it = file.metadata.find(key);
  TG_CHECK(it != file.metadata.end(), "load: '{}' is not a tapegrad training checkpoint (no '{}' entry)", path, key);
  return it->second;
}
// A count entry (step, optimizer step), in lo..2^62: larger values are corrupt and would overflow.
std::int64_t training_count(const SafetensorsFile& file, const std::string& path, const char* key, std::int64_t lo) {
  const std::string& text = training_entry(file, path, key);
  std::int64_t v = 0;
  const auto [end, err] = std::from_chars(text.data(), text.data() + text.size(), v);
  constexpr std::int64_t kMax = std::int64_t{1} << 62;
  TG_CHECK(err == std::errc() && end == text.data() + text.size() && v >= lo && v <= kMax,
           "load: '{}' has a malformed '{}' entry '{}' (expected an integer in {}..2^62)", path, key, text, lo);
  return v;
}
}  // namespace

const Tensor* SafetensorsFile::find(const std::string& name) const {
  for (const NamedTensor& t : tensors)
    if (t.name == name) return &t.tensor;
  return nullptr;
}

void save_safetensors(const std::string& path, const std::vector<NamedTensor>& tensors, const Metadata& metadata) {
  json header = json::object();
  std::vector<Tensor> data;
  std::uint64_t offset = 0;
  for (const NamedTensor& nt : tensors) {
    TG_CHECK(nt.tensor.defined(), "save: tensor '{}' is undefined", nt.name);
    TG_CHECK(nt.name != "__metadata__" && !nt.name.empty(), "save: invalid tensor name '{}'", nt.name);
    TG_CHECK(valid_utf8(nt.name), "save: tensor name '{}' is not valid UTF-8 (the header is JSON)", nt.name);
    TG_CHECK(!header.contains(nt.name), "save: tensor name '{}' appears twice", nt.name);
    const Tensor t = nt.tensor.detach().contiguous();
    const std::uint64_t bytes = static_cast<std::uint64_t>(t.numel()) * t.element_size();
    header[nt.name] = {{"dtype", safetensors_dtype(t.dtype())},
                       {"shape", t.shape().to_vector()},
                       {"data_offsets", {offset, offset + bytes}}};
    offset += bytes;
    data.push_back(t);
  }
  json meta = json::object();
  for (const auto& [k, v] : metadata) {
    TG_CHECK(valid_utf8(k) && valid_utf8(v), "save: metadata entry '{}' = '{}' is not valid UTF-8 (the header is JSON)", k,
             v.substr(0, 100));
    meta[k] = v;
  }
  meta[kCrcKey] = std::to_string(crc_of(data));
  meta.erase(kHeaderCrcKey);  // (metadata copied from a loaded file carries the old one)
  header["__metadata__"] = meta;
  header["__metadata__"][kHeaderCrcKey] = std::to_string(header_crc(header));
  std::string text = header.dump();
  text.append((8 - text.size() % 8) % 8, ' ');  // the data starts 8-byte aligned
  unsigned char len[8];
  for (int i = 0; i < 8; ++i) len[i] = static_cast<unsigned char>(std::uint64_t{text.size()} >> (8 * i));  // little-endian
  std::vector<Chunk> chunks{{len, 8}, {text.data(), text.size()}};
  for (const Tensor& t : data) chunks.push_back({t.raw_data(), static_cast<std::size_t>(t.numel()) * t.element_size()});
  write_chunks_atomically(path, chunks, "save");
}

void write_file_atomically(const std::string& path, const std::string& text) {
  write_chunks_atomically(path, {{text.data(), text.size()}}, "write");
}

std::ifstream open_regular_file(const std::string& path, const char* op) {
  std::error_code ec;
  const auto status = std::filesystem::status(path, ec);
  TG_CHECK(std::filesystem::exists(status), "{}: cannot open '{}' ({})", op, path,
           ec ? ec.message() : std::string("no such file"));
  TG_CHECK(std::filesystem::is_regular_file(status), "{}: '{}' is not a regular file", op, path);
  std::ifstream in(path, std::ios::binary);
  TG_CHECK(in.good(), "{}: cannot open '{}'", op, path);
  return in;
}

SafetensorsFile load_safetensors(const std::string& path) {
  std::ifstream in = open_regular_file(path, "load");
  in.seekg(0, std::ios::end);
  const auto file_size = static_cast<std::uint64_t>(in.tellg());
  in.seekg(0);
  TG_CHECK(file_size >= 8, "load: '{}' is truncated ({} bytes; a safetensors file starts with an 8-byte header length)",
           path, file_size);
  unsigned char len[8];
  in.read(reinterpret_cast<char*>(len), 8);
  std::uint64_t header_len = 0;
  for (int i = 7; i >= 0; --i) header_len = (header_len << 8) | len[i];
  TG_CHECK(header_len <= kMaxHeaderBytes && header_len <= file_size - 8,
           "load: '{}' is corrupt or truncated: header length {} exceeds the file size {}", path, header_len, file_size);
  std::string text(static_cast<std::size_t>(header_len), '\0');
  in.read(text.data(), static_cast<std::streamsize>(header_len));
  TG_CHECK(in.good(), "load: '{}' is truncated inside the header", path);
  json header;
  try {
    DuplicateKeyCheck dup;  // first: it also refuses a nesting too deep to build a tree of
    json::sax_parse(text, &dup);
    TG_CHECK(!dup.too_deep, "load: '{}' has a corrupt header: JSON nested more than {} levels deep", path,
             DuplicateKeyCheck::kMaxNesting);
    TG_CHECK(dup.duplicate.empty(), "load: '{}' has a corrupt header: the key '{}' appears twice", path, dup.duplicate);
    header = json::parse(text);
  } catch (const json::exception& e) {
    TG_FAIL("load: '{}' has a corrupt header: {}", path, e.what());
  }
  TG_CHECK(header.is_object(), "load: '{}' has a corrupt header (not a JSON object)", path);
  if (auto m = header.find("__metadata__"); m != header.end() && m->is_object() && m->contains(kHeaderCrcKey)) {
    const json& stored = (*m)[kHeaderCrcKey];
    TG_CHECK(stored.is_string() && stored.get<std::string>() == std::to_string(header_crc(header)),
             "load: '{}' is corrupt: its header (tensor table or metadata: step, RNG state, ...) does not match the "
             "checksum stored when it was written",
             path);
  }
  const std::uint64_t data_size = file_size - 8 - header_len;

  SafetensorsFile file;
  struct Entry {
    std::string name;
    DType dtype;
    Shape shape;
    std::uint64_t begin, end;
  };
  std::vector<Entry> entries;
  for (auto it = header.begin(); it != header.end(); ++it) {
    if (it.key() == "__metadata__") {
      TG_CHECK(it->is_object(), "load: '{}': __metadata__ must be an object", path);
      for (auto m = it->begin(); m != it->end(); ++m) {
        TG_CHECK(m->is_string(), "load: '{}': metadata value '{}' is not a string", path, m.key());
        file.metadata[m.key()] = m->get<std::string>();
      }
      continue;
    }
    const json& e = *it;
    TG_CHECK(e.is_object() && e.contains("dtype") && e.contains("shape") && e.contains("data_offsets"),
             "load: '{}': entry '{}' needs dtype, shape and data_offsets", path, it.key());
    TG_CHECK(e["dtype"].is_string(), "load: '{}': entry '{}' has a non-string dtype", path, it.key());
    const auto dtype = parse_dtype(e["dtype"].get<std::string>());
    TG_CHECK(dtype.has_value(), "load: '{}': tensor '{}' has unsupported dtype '{}'", path, it.key(),
             e["dtype"].get<std::string>());
    TG_CHECK(e["shape"].is_array() && e["shape"].size() <= static_cast<std::size_t>(kMaxDims),
             "load: '{}': tensor '{}' has an invalid shape", path, it.key());
    Shape shape;
    std::uint64_t numel = 1;
    for (const json& d : e["shape"]) {
      TG_CHECK(d.is_number_unsigned(), "load: '{}': tensor '{}' has a negative or non-integer dim", path, it.key());
      const std::uint64_t v = d.get<std::uint64_t>();
      TG_CHECK(v < (std::uint64_t{1} << 40), "load: '{}': tensor '{}' has an absurd dim {}", path, it.key(), v);
      shape.push_back(static_cast<std::int64_t>(v));
      TG_CHECK(v == 0 || numel < (std::uint64_t{1} << 44) / v, "load: '{}': tensor '{}' is too large", path, it.key());
      numel *= v;  // < 2^44: cannot wrap
    }
    const json& off = e["data_offsets"];
    TG_CHECK(off.is_array() && off.size() == 2 && off[0].is_number_unsigned() && off[1].is_number_unsigned(),
             "load: '{}': tensor '{}' has invalid data_offsets", path, it.key());
    const std::uint64_t b = off[0].get<std::uint64_t>(), end = off[1].get<std::uint64_t>();
    TG_CHECK(b <= end && end <= data_size,
             "load: '{}' is truncated or corrupt: tensor '{}' needs bytes [{}, {}) but the data section has {}", path,
             it.key(), b, end, data_size);
    TG_CHECK(end - b == numel * dtype_size(*dtype),
             "load: '{}': tensor '{}' of shape {} ({}) should span {} bytes, its offsets span {}", path, it.key(), shape,
             dtype_name(*dtype), numel * dtype_size(*dtype), end - b);
    entries.push_back({it.key(), *dtype, shape, b, end});
  }
  // The data section must be covered exactly once, without holes or overlaps.
  std::vector<const Entry*> sorted;
  for (const Entry& e : entries) sorted.push_back(&e);
  // (By end too: an empty tensor at the offset where another one starts comes first.)
  std::stable_sort(sorted.begin(), sorted.end(),
                   [](const Entry* a, const Entry* b) { return std::pair(a->begin, a->end) < std::pair(b->begin, b->end); });
  std::uint64_t cursor = 0;
  for (const Entry* e : sorted) {
    TG_CHECK(e->begin == cursor, "load: '{}' is corrupt: tensor '{}' starts at byte {} but the previous one ends at {}",
             path, e->name, e->begin, cursor);
    cursor = e->end;
  }
  TG_CHECK(cursor == data_size, "load: '{}' is corrupt: {} bytes of data after the last tensor (expected {})", path,
           data_size - cursor, cursor);
  // Read the data in file order.
  std::vector<Tensor> data;
  std::vector<Tensor> by_entry(entries.size());  // indexed like `entries`
  for (const Entry* e : sorted) {
    Tensor t = empty(e->shape, e->dtype);
    in.read(static_cast<char*>(t.raw_data()), static_cast<std::streamsize>(e->end - e->begin));
    TG_CHECK(in.good() || e->end == e->begin, "load: '{}' is truncated inside tensor '{}'", path, e->name);
    if (e->dtype == DType::boolean) {  // only 0/1 are valid bool bytes
      const auto* p = static_cast<const unsigned char*>(t.raw_data());
      for (std::int64_t i = 0; i < t.numel(); ++i)
        TG_CHECK(p[i] <= 1, "load: '{}': bool tensor '{}' holds the byte {}", path, e->name, p[i]);
    }
    data.push_back(t);
    by_entry[static_cast<std::size_t>(e - entries.data())] = t;
  }
  if (auto crc = file.metadata.find(kCrcKey); crc != file.metadata.end()) {
    TG_CHECK(crc->second == std::to_string(crc_of(data)),
             "load: '{}' is corrupt: its data does not match the checksum stored when it was written", path);
  }
  // Report tensors in the parsed header's order (sorted by name: stable for users).
  for (std::size_t i = 0; i < entries.size(); ++i) file.tensors.push_back({entries[i].name, by_entry[i]});
  return file;
}

namespace {
// `metadata` plus the model's structure entry.
Metadata with_structure(Module& m, const Metadata& metadata) {
  Metadata meta = metadata;
  json modules = json::object();
  for (const auto& [path, text] : m.named_structures()) modules[path] = text;
  if (!modules.empty()) meta[kStructureKey] = modules.dump();
  return meta;
}

// Refuses a file whose recorded structure differs from the model's: same tensor shapes, another
// function (4 heads against 8, other rotary frequencies, another activation).
void check_structure(const SafetensorsFile& file, Module& m, const std::string& path) {
  const auto entry = file.metadata.find(kStructureKey);
  if (entry == file.metadata.end()) return;
  json saved;
  try {
    saved = json::parse(entry->second);
  } catch (const json::exception& e) {
    TG_FAIL("load: '{}' has a malformed '{}' entry: {}", path, kStructureKey, e.what());
  }
  TG_CHECK(saved.is_object(), "load: '{}': '{}' is not a JSON object", path, kStructureKey);
  auto where = [](const std::string& p) { return p.empty() ? std::string("the model") : "'" + p + "'"; };
  const auto current = m.named_structures();
  for (const auto& [p, text] : current) {
    const auto it = saved.find(p);
    TG_CHECK(it != saved.end() && it->is_string() && it->get<std::string>() == text,
             "load: '{}' was saved from a model whose {} is {}, but here it is {}: the tensors fit, the function "
             "differs (build the model with the saved run's settings)",
             path, where(p), it == saved.end() ? std::string("absent") : it->is_string() ? it->get<std::string>() : it->dump(),
             text);
  }
  for (const auto& [p, text] : saved.items()) {
    const bool known = std::any_of(current.begin(), current.end(), [&](const auto& c) { return c.first == p; });
    TG_CHECK(known, "load: '{}' was saved from a model with {} = {}, which this model does not have", path, where(p),
             text.is_string() ? text.get<std::string>() : text.dump());
  }
}
}  // namespace

void save_module(Module& m, const std::string& path, const Metadata& metadata) {
  // Buffers are not checked: one may hold infinities on purpose (an additive mask of -inf).
  refuse_diverged(m.named_parameters(), path, "");
  save_safetensors(path, m.state(), with_structure(m, metadata));
}

namespace {
// Validates that `file` holds exactly `targets` (with `prefix`), then copies. All or nothing.
void restore(const SafetensorsFile& file, const std::vector<NamedTensor>& targets, const std::string& prefix,
             const std::string& path, const char* what) {
  for (const NamedTensor& t : targets) {
    const Tensor* src = file.find(prefix + t.name);
    TG_CHECK(src != nullptr, "load: '{}' has no tensor '{}' for the {}", path, prefix + t.name, what);
    TG_CHECK(src->shape() == t.tensor.shape() && src->dtype() == t.tensor.dtype(),
             "load: '{}': tensor '{}' is {} {} in the file but {} {} in the {}", path, prefix + t.name, src->shape(),
             src->dtype(), t.tensor.shape(), t.tensor.dtype(), what);
  }
}
void copy_all(const SafetensorsFile& file, std::vector<NamedTensor>& targets, const std::string& prefix) {
  NoGradGuard no_grad;
  for (NamedTensor& t : targets) t.tensor.copy_(*file.find(prefix + t.name));
}
std::size_t count_prefixed(const SafetensorsFile& file, const std::string& prefix) {
  return static_cast<std::size_t>(std::count_if(file.tensors.begin(), file.tensors.end(), [&](const NamedTensor& t) {
    return t.name.rfind(prefix, 0) == 0;
  }));
}
// The names under `prefix` in `file` that `targets` does not have (the first 5), for the error of a
// file with more tensors than the model: "'a.b', 'c' (and 3 more)".
std::string extra_names(const SafetensorsFile& file, const std::vector<NamedTensor>& targets, const std::string& prefix) {
  std::unordered_set<std::string> expected;
  for (const NamedTensor& t : targets) expected.insert(prefix + t.name);
  std::vector<std::string> extra;
  for (const NamedTensor& t : file.tensors)
    if (t.name.rfind(prefix, 0) == 0 && !expected.count(t.name)) extra.push_back(fmt::format("'{}'", t.name));
  const std::size_t shown = std::min<std::size_t>(extra.size(), 5);
  std::string list;
  for (std::size_t i = 0; i < shown; ++i) list.append(i ? ", " : "").append(extra[i]);
  if (extra.size() > shown) list += fmt::format(" (and {} more)", extra.size() - shown);
  return list;
}
}  // namespace

Metadata load_module(Module& m, const std::string& path) {
  const SafetensorsFile file = load_safetensors(path);
  std::vector<NamedTensor> targets = m.state();
  restore(file, targets, "", path, "model");
  TG_CHECK(file.tensors.size() == targets.size(), "load: '{}' holds {} tensors but the model has {}; not in the model: {}",
           path, file.tensors.size(), targets.size(), extra_names(file, targets, ""));
  check_structure(file, m, path);
  copy_all(file, targets, "");
  return file.metadata;
}

void save_training_checkpoint(const std::string& path, Module& model, Optimizer& optimizer, std::int64_t step,
                              const Generator& gen, const EMA* ema, const Metadata& metadata) {
  std::vector<NamedTensor> all;
  for (const NamedTensor& t : model.state()) all.push_back({"model." + t.name, t.tensor});
  for (const NamedTensor& t : optimizer.state()) all.push_back({"optim." + t.name, t.tensor});
  if (ema)
    for (const NamedTensor& t : ema->state()) all.push_back({"ema." + t.name, t.tensor});
  // A diverged run (NaN or inf weights or optimizer moments) must not replace its last good
  // checkpoint: a resume from it could only produce NaN. Only trained tensors are checked: a
  // buffer may hold infinities on purpose (an additive mask of -inf).
  std::vector<NamedTensor> trained;
  for (const NamedTensor& t : model.named_parameters()) trained.push_back({"model." + t.name, t.tensor});
  for (const NamedTensor& t : optimizer.state()) trained.push_back({"optim." + t.name, t.tensor});
  refuse_diverged(trained, path, fmt::format(" at step {}", step));
  Metadata meta = with_structure(model, metadata);
  meta["format"] = kTrainingFormat;
  meta["step"] = std::to_string(step);
  meta["optimizer"] = optimizer.type_name();
  meta["optimizer.step"] = std::to_string(optimizer.step_count());
  // Parameters that missed updates (no gradient in some steps) keep their own count; absent in
  // older checkpoints, where every parameter had the global count.
  json lagging = json::object();
  for (const auto& [name, updates] : optimizer.lagging_params()) lagging[name] = updates;
  if (!lagging.empty()) meta["optimizer.param_updates"] = lagging.dump();
  meta["rng.seed"] = std::to_string(gen.state().seed);
  meta["rng.offset"] = std::to_string(gen.state().offset);
  save_safetensors(path, all, meta);
}

std::int64_t training_checkpoint_step(const SafetensorsFile& file, const std::string& path) {
  return training_count(file, path, "step", 0);
}

TrainingState load_training_checkpoint(const std::string& path, Module& model, Optimizer& optimizer, Generator& gen,
                                       EMA* ema) {
  const SafetensorsFile file = load_safetensors(path);
  auto meta = [&](const char* key) -> const std::string& { return training_entry(file, path, key); };
  TG_CHECK(meta("format") == kTrainingFormat || meta("format") == kTrainingFormatV1, "load: '{}' has unknown format '{}'", path,
           meta("format"));
  TG_CHECK(meta("format") == kTrainingFormatV1 || file.metadata.count(kHeaderCrcKey) == 1,
           "load: '{}' is corrupt: a {} checkpoint without its header checksum '{}'", path, kTrainingFormat, kHeaderCrcKey);
  TG_CHECK(meta("optimizer") == optimizer.type_name(), "load: '{}' was saved with {} but the optimizer is {}", path,
           meta("optimizer"), optimizer.type_name());
  std::vector<NamedTensor> model_t = model.state(), optim_t = optimizer.state();
  std::vector<NamedTensor> ema_t = ema ? ema->state() : std::vector<NamedTensor>{};
  restore(file, model_t, "model.", path, "model");
  restore(file, optim_t, "optim.", path, "optimizer");
  if (ema) restore(file, ema_t, "ema.", path, "EMA");
  TG_CHECK(count_prefixed(file, "model.") == model_t.size(),
           "load: '{}' holds {} model tensors but the model has {}; not in the model: {}", path,
           count_prefixed(file, "model."), model_t.size(), extra_names(file, model_t, "model."));
  TG_CHECK(count_prefixed(file, "optim.") == optim_t.size(),
           "load: '{}' holds {} optimizer tensors but the optimizer has {}; not in the optimizer: {}", path,
           count_prefixed(file, "optim."), optim_t.size(), extra_names(file, optim_t, "optim."));
  TG_CHECK(!ema || count_prefixed(file, "ema.") == ema_t.size(),
           "load: '{}' holds {} EMA tensors but the EMA has {}; not in the EMA: {}", path, count_prefixed(file, "ema."),
           ema_t.size(), extra_names(file, ema_t, "ema."));
  check_structure(file, model, path);

  // Every metadata value is parsed and checked before anything is changed: all or nothing.
  auto unsigned_integer = [&](const char* key) {
    const std::string& text = meta(key);
    std::uint64_t v = 0;
    const auto [end, err] = std::from_chars(text.data(), text.data() + text.size(), v);
    TG_CHECK(err == std::errc() && end == text.data() + text.size(),
             "load: '{}' has a malformed '{}' entry '{}' (expected an unsigned integer)", path, key, text);
    return v;
  };
  TrainingState state;
  state.step = training_checkpoint_step(file, path);
  const std::int64_t opt_step = training_count(file, path, "optimizer.step", 0);
  const Generator::State rng{unsigned_integer("rng.seed"), unsigned_integer("rng.offset")};
  std::vector<std::pair<std::string, std::int64_t>> lagging;
  if (auto it = file.metadata.find("optimizer.param_updates"); it != file.metadata.end()) {
    json counts;
    try {
      counts = json::parse(it->second);
    } catch (const json::exception& e) {
      TG_FAIL("load: '{}' has malformed optimizer.param_updates metadata: {}", path, e.what());
    }
    TG_CHECK(counts.is_object(), "load: '{}': optimizer.param_updates is not a JSON object", path);
    std::set<std::string> names;
    for (const ParamGroup& g : optimizer.groups())
      for (const NamedTensor& p : g.params) names.insert(p.name);
    for (const auto& [name, updates] : counts.items()) {
      TG_CHECK(updates.is_number_integer() && updates.get<std::int64_t>() >= 0 && updates.get<std::int64_t>() <= opt_step,
               "load: '{}': optimizer.param_updates gives parameter '{}' {} updates after {} steps", path, name,
               updates.dump(), opt_step);
      TG_CHECK(names.count(name) == 1, "load: '{}': optimizer.param_updates names '{}', not a parameter of the optimizer",
               path, name);
      lagging.emplace_back(name, updates.get<std::int64_t>());
    }
  }
  copy_all(file, model_t, "model.");
  copy_all(file, optim_t, "optim.");
  if (ema) copy_all(file, ema_t, "ema.");
  optimizer.set_step_count(opt_step);
  for (const auto& [name, updates] : lagging) optimizer.set_param_updates(name, updates);
  gen.set_state(rng);
  for (const auto& [k, v] : file.metadata)
    if (k.rfind("tapegrad.", 0) != 0) state.metadata[k] = v;
  return state;
}

}  // namespace tg::nn
