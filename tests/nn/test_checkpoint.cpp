// safetensors checkpoints: round trips, the file format, corruption and mismatch cases (the model
// stays untouched), atomic writes, and bit-exact resume of training.
#include <catch2/catch.hpp>

#include <atomic>
#include <cctype>
#include <filesystem>
#include <fstream>
#include <functional>
#include <limits>
#include <nlohmann/json.hpp>
#include <thread>

#include <sys/stat.h>

#include "core/autograd.hpp"
#include "nn/checkpoint.hpp"
#include "nn/output.hpp"
#include "nn/attention.hpp"
#include "nn/linear.hpp"
#include "nn/norm.hpp"
#include "nn/optim.hpp"
#include "ops/elementwise.hpp"
#include "ops/loss.hpp"
#include "ops/shape.hpp"
#include "tests/support/helpers.hpp"

using namespace tg;
using Catch::Matchers::Contains;
using Catch::Matchers::Equals;
namespace fs = std::filesystem;

namespace {

struct TempDir {
  fs::path path;
  TempDir() {
    path = fs::temp_directory_path() / fmt::format("tapegrad-test-{}-{}", ::getpid(), counter()++);
    fs::create_directories(path);
  }
  ~TempDir() { fs::remove_all(path); }
  std::string file(const std::string& name) const { return (path / name).string(); }
  static int& counter() {
    static int c = 0;
    return c;
  }
};

struct Net : nn::Module {
  nn::Linear fc1, fc2;
  nn::Dropout drop{0.2};
  Tensor steps = zeros({1}, DType::i64);  // a non-float buffer
  explicit Net(Generator* g = nullptr) : fc1(6, 16, {.gen = g}), fc2(16, 3, {.gen = g}) {}
  Tensor operator()(const Tensor& x) { return fc2(drop(ops::relu(fc1(x)))); }
  void visit(nn::Visitor& v) override {
    v.module("fc1", fc1);
    v.module("fc2", fc2);
    v.buffer("steps", steps);
  }
  std::string type_name() const override { return "Net"; }
};

// Net with one more buffer (the test below fills it with infinities, as an additive mask).
struct Masked : Net {
  Tensor mask;  // [2, 2]
  void visit(nn::Visitor& v) override {
    Net::visit(v);
    v.buffer("mask", mask);
  }
};

using test::read_file;
void write_file(const std::string& p, const std::string& bytes) {
  std::ofstream out(p, std::ios::binary);
  out << bytes;
}
// A safetensors file's header length: its first 8 bytes, a little-endian u64.
std::uint64_t header_length(const std::string& bytes) {
  std::uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | static_cast<unsigned char>(bytes[i]);
  return n;
}
// A safetensors file made by hand: the header length, the header text as given, the data.
std::string safetensors_bytes(const std::string& header, const std::string& data) {
  std::string out(8, '\0');
  for (int i = 0; i < 8; ++i) out[i] = static_cast<char>(std::uint64_t{header.size()} >> (8 * i));
  return out + header + data;
}
// The file's bytes with its JSON header edited by `edit` (re-padded; the data section as it was).
std::string with_header(const std::string& bytes, const std::function<void(nlohmann::json&)>& edit) {
  const std::uint64_t n = header_length(bytes);
  nlohmann::json header = nlohmann::json::parse(bytes.substr(8, n));
  edit(header);
  std::string text = header.dump();
  text.append((8 - text.size() % 8) % 8, ' ');
  return safetensors_bytes(text, bytes.substr(8 + n));
}
bool same_state(nn::Module& a, nn::Module& b) {
  auto sa = a.state(), sb = b.state();
  if (sa.size() != sb.size()) return false;
  for (std::size_t i = 0; i < sa.size(); ++i)
    if (sa[i].name != sb[i].name || !test::same_bits(sa[i].tensor, sb[i].tensor)) return false;
  return true;
}

}  // namespace

TEST_CASE("module round trip and the safetensors layout", "[nn][checkpoint]") {
  TempDir dir;
  Generator g1(1), g2(2);
  Net a(&g1), b(&g2);
  a.steps.fill_(42);
  nn::save_module(a, dir.file("m.safetensors"), {{"note", "hello"}});
  CHECK_FALSE(same_state(a, b));
  const nn::Metadata meta = nn::load_module(b, dir.file("m.safetensors"));
  CHECK(same_state(a, b));
  CHECK(meta.at("note") == "hello");
  // Layout: little-endian u64 header length, then a JSON header, data 8-byte aligned.
  const std::string bytes = read_file(dir.file("m.safetensors"));
  const std::uint64_t n = header_length(bytes);
  CHECK(n % 8 == 0);
  const std::string header = bytes.substr(8, n);
  CHECK_THAT(header, Contains("\"fc1.weight\":{\"data_offsets\":[0,384],\"dtype\":\"F32\",\"shape\":[16,6]}"));
  CHECK_THAT(header, Contains("\"steps\":{\"data_offsets\""));
  CHECK_THAT(header, Contains("\"dtype\":\"I64\""));
  const auto file = nn::load_safetensors(dir.file("m.safetensors"));
  CHECK(file.tensors.size() == 5);
  CHECK(file.find("fc2.bias")->shape() == Shape{3});
  // f64, bool and 0-d tensors survive too.
  nn::save_safetensors(dir.file("t.safetensors"),
                       {{"x", test::randn({3, 2}, DType::f64, 3)}, {"m", tensor({1, 0}, DType::boolean)}, {"s", scalar_tensor(7)}});
  const auto t = nn::load_safetensors(dir.file("t.safetensors"));
  CHECK(test::same_bits(*t.find("x"), test::randn({3, 2}, DType::f64, 3)));
  CHECK(t.find("m")->to_vector<bool>() == std::vector<bool>{true, false});
  CHECK(t.find("s")->dim() == 0);
  // An empty tensor at the offset where the next one starts (its header entry sorts after it).
  const std::string one = std::string("\0\0\x80\x3f", 4);  // 1.0f
  write_file(dir.file("e.safetensors"),
             safetensors_bytes(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"z":{"dtype":"F32","shape":[2,0],"data_offsets":[0,0]}})",
                               one));
  const auto e = nn::load_safetensors(dir.file("e.safetensors"));
  CHECK(e.find("a")->to_vector<float>() == std::vector<float>{1.0f});
  CHECK(e.find("z")->shape() == Shape{2, 0});
}

TEST_CASE("loading rejects truncated, corrupted and mismatched files without touching the model", "[nn][checkpoint][errors]") {
  TempDir dir;
  Generator g1(1), g2(2);
  Net a(&g1), b(&g2);
  const std::string path = dir.file("a.safetensors");
  nn::save_module(a, path);
  const std::string good = read_file(path);
  Net before = b;
  before.clone_parameters();

  auto expect_error = [&](const std::string& bytes, const std::string& message) {
    write_file(dir.file("bad.safetensors"), bytes);
    CHECK_THROWS_WITH(nn::load_module(b, dir.file("bad.safetensors")), Contains(message));
    CHECK(same_state(b, before));  // untouched
  };
  expect_error("", "is truncated");
  expect_error(good.substr(0, 5), "is truncated");
  expect_error(good.substr(0, 40), "header length");
  expect_error(good.substr(0, good.size() - 7), "is truncated or corrupt");
  std::string flipped = good;
  flipped[flipped.size() - 3] ^= 0x40;
  expect_error(flipped, "does not match the checksum");
  std::string bad_json = good;
  bad_json[8] = '#';  // the opening brace
  expect_error(bad_json, "has a corrupt header");
  std::string huge = good;
  huge[7] = 0x7f;
  expect_error(huge, "header length");
  CHECK_THROWS_WITH(nn::load_module(b, dir.file("missing.safetensors")), Contains("cannot open"));
  // A key twice in one object (JSON parsers keep the last one silently).
  const std::string entry = R"({"dtype":"F32","shape":[1],"data_offsets":[0,4]})";
  const std::string dup = "{\"w\":" + entry + ",\"w\":" + entry + "}";
  expect_error(safetensors_bytes(dup, std::string(4, '\0')), "the key 'w' appears twice");
  // Nesting a million levels deep (a few MiB of '['): refused before a tree is built from it.
  // (With the header checksum key present, the tree was copied to check it, and copying such a
  // tree overflows the stack: a segfault instead of an error.)
  std::string deep = "{\"__metadata__\":{\"tapegrad.header_crc32\":\"0\"},\"w\":";
  deep.append(1'000'000, '[').append(1'000'000, ']').append("}");
  expect_error(safetensors_bytes(deep, ""), "JSON nested more than 16 levels deep");
  // A shape whose element count wraps around 2^64 (to 0, which would match empty offsets).
  expect_error(safetensors_bytes(R"({"w":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,0]}})", ""),
               "tensor 'w' is too large");

  struct Other : nn::Module {
    nn::Linear fc1{6, 8};
    void visit(nn::Visitor& v) override { v.module("fc1", fc1); }
    std::string type_name() const override { return "Other"; }
  } other;
  CHECK_THROWS_WITH(nn::load_module(other, path), Contains("tensor 'fc1.weight' is [16, 6] f32 in the file but [8, 6] f32 in the model"));
  nn::save_safetensors(dir.file("partial.safetensors"), {{"fc1.weight", a.fc1.weight}});
  CHECK_THROWS_WITH(nn::load_module(b, dir.file("partial.safetensors")), Contains("has no tensor 'fc1.bias'"));
  CHECK(same_state(b, before));
  // A file with a tensor the model does not have names it.
  std::vector<nn::NamedTensor> more = a.state();
  more.push_back({"head.extra", ones({2})});
  nn::save_safetensors(dir.file("more.safetensors"), more);
  CHECK_THROWS_WITH(nn::load_module(b, dir.file("more.safetensors")),
                    Contains("tensors but the model has") && Contains("not in the model: 'head.extra'"));
  CHECK(same_state(b, before));
  CHECK_THROWS_WITH(nn::save_safetensors(dir.file("nofolder/x.safetensors"), {}), Contains("does not exist"));
}

// Attention, a group norm and an MLP: settings that the tensor shapes do not show.
struct Settings : nn::Module {
  nn::MultiheadAttention attn;
  nn::GroupNorm norm;
  nn::MLP mlp;
  Settings(std::int64_t heads, std::int64_t groups, nn::Activation act, std::optional<double> scale = {})
      : attn(8, heads, {.scale = scale}), norm(groups, 8), mlp(8, 16, -1, {.activation = act}) {}
  void visit(nn::Visitor& v) override {
    v.module("attn", attn);
    v.module("norm", norm);
    v.module("mlp", mlp);
  }
  std::string type_name() const override { return "Settings"; }
};

TEST_CASE("loading refuses a model whose heads, groups or activation differ although the shapes fit", "[nn][checkpoint][errors]") {
  TempDir dir;
  Settings saved(4, 2, nn::Activation::gelu);
  const std::string path = dir.file("s.safetensors");
  nn::save_module(saved, path);
  const auto recorded = nlohmann::json::parse(nn::load_safetensors(path).metadata.at("tapegrad.structure"));
  CHECK(recorded.at("attn") == "MultiheadAttention(heads=4, scale=0.7071067811865475)");
  CHECK(recorded.at("norm") == "GroupNorm(groups=2)");
  CHECK(recorded.at("mlp") == "MLP(activation=gelu)");

  Settings same(4, 2, nn::Activation::gelu);
  nn::load_module(same, path);
  CHECK(same_state(same, saved));
  auto refuses = [&](Settings target, const std::string& message) {
    Settings before = target;
    before.clone_parameters();
    CHECK_THROWS_WITH(nn::load_module(target, path), Contains(message) && Contains("the tensors fit, the function differs"));
    CHECK(same_state(target, before));
  };
  refuses(Settings(2, 2, nn::Activation::gelu),
          "model whose 'attn' is MultiheadAttention(heads=4, scale=0.7071067811865475), but here it is "
          "MultiheadAttention(heads=2, scale=0.5)");
  refuses(Settings(4, 2, nn::Activation::gelu, 1.0), "here it is MultiheadAttention(heads=4, scale=1)");
  refuses(Settings(4, 4, nn::Activation::gelu), "whose 'norm' is GroupNorm(groups=2), but here it is GroupNorm(groups=4)");
  refuses(Settings(4, 2, nn::Activation::relu), "whose 'mlp' is MLP(activation=gelu), but here it is MLP(activation=relu)");

  // Training checkpoints carry the same record.
  Generator run(3);
  nn::AdamW opt(saved.named_parameters(), {.lr = 1e-3});
  nn::save_training_checkpoint(dir.file("t.safetensors"), saved, opt, 1, run);
  Settings other(2, 2, nn::Activation::gelu);
  nn::AdamW opt2(other.named_parameters(), {.lr = 1e-3});
  CHECK_THROWS_WITH(nn::load_training_checkpoint(dir.file("t.safetensors"), other, opt2, run), Contains("heads=2"));

  // A file without the record (older tapegrad, other writers) loads on its tensors alone; a
  // malformed record is an error.
  nn::save_safetensors(dir.file("plain.safetensors"), saved.state());
  Settings plain(2, 2, nn::Activation::relu);
  nn::load_module(plain, dir.file("plain.safetensors"));
  CHECK(same_state(plain, saved));
  nn::save_safetensors(dir.file("bad.safetensors"), saved.state(), {{"tapegrad.structure", "[1, 2"}});
  CHECK_THROWS_WITH(nn::load_module(same, dir.file("bad.safetensors")), Contains("malformed 'tapegrad.structure'"));
  // A module that the saved model had and this one lacks (or the other way round) is named.
  nn::save_safetensors(dir.file("extra.safetensors"), saved.state(),
                       {{"tapegrad.structure", R"json({"attn": "MultiheadAttention(heads=4, scale=0.7071067811865475)",
                          "norm": "GroupNorm(groups=2)", "mlp": "MLP(activation=gelu)", "pool": "Pool(k=2)"})json"}});
  CHECK_THROWS_WITH(nn::load_module(same, dir.file("extra.safetensors")), Contains("'pool' = Pool(k=2), which this model does not have"));
}

TEST_CASE("saves are atomic: an existing file survives a failed save, no temporaries are left", "[nn][checkpoint]") {
  TempDir dir;
  Net a;
  const std::string path = dir.file("a.safetensors");
  nn::save_module(a, path);
  const std::string before = read_file(path);
  Tensor undefined;
  CHECK_THROWS(nn::save_safetensors(path, {{"w", a.fc1.weight}, {"bad", undefined}}));
  CHECK(read_file(path) == before);
  nn::save_module(a, path);  // overwrite in place
  int files = 0;
  for (const auto& e : fs::directory_iterator(dir.path)) files += e.is_regular_file();
  CHECK(files == 1);
  // Two threads saving to one path: each save has its own temporary, so every save succeeds and
  // the file is always one of them whole.
  Net b;
  std::atomic<int> failures{0};
  auto saver = [&](Net& net) {
    for (int i = 0; i < 40; ++i) {
      try {
        nn::save_module(net, path);
      } catch (const std::exception&) {
        ++failures;
      }
    }
  };
  std::thread t1(saver, std::ref(a)), t2(saver, std::ref(b));
  t1.join();
  t2.join();
  CHECK(failures == 0);
  Net c;
  nn::load_module(c, path);
  CHECK((test::same_bits(c.fc1.weight, a.fc1.weight) || test::same_bits(c.fc1.weight, b.fc1.weight)));
  files = 0;
  for (const auto& e : fs::directory_iterator(dir.path)) files += e.is_regular_file();
  CHECK(files == 1);
}

TEST_CASE("resuming from a training checkpoint reproduces the uninterrupted run bit for bit", "[nn][checkpoint]") {
  TempDir dir;
  const Tensor x = test::randn({64, 6}, DType::f32, 5);
  const Tensor y = ops::repeat(tensor({0, 1, 2, 1, 0, 2, 2, 1}, DType::i64), {8});
  auto train = [&](Net& net, nn::AdamW& opt, Generator& gen, int from, int to) {
    for (int step = from; step < to; ++step) {
      net.drop.gen = &gen;  // dropout masks come from the run's generator
      Tensor loss = ops::cross_entropy(net(x), y);
      opt.zero_grad();
      loss.backward();
      nn::clip_grad_norm(net.parameters(), 1.0);
      opt.step();
    }
  };
  // Uninterrupted: 10 steps.
  Generator init1(7), run1(99);
  Net straight(&init1);
  nn::AdamW opt1(straight.named_parameters(), {.lr = 0.01, .weight_decay = 0.01});
  train(straight, opt1, run1, 0, 10);
  // Interrupted after 4 steps, saved, restored into fresh objects, continued.
  Generator init2(7), run2(99);
  Net first(&init2);
  nn::AdamW opt2(first.named_parameters(), {.lr = 0.01, .weight_decay = 0.01});
  train(first, opt2, run2, 0, 4);
  nn::EMA ema(first, 0.9);
  nn::save_training_checkpoint(dir.file("ckpt.safetensors"), first, opt2, 4, run2, &ema, {{"epoch", "0"}});
  Generator init3(123), run3(0);
  Net resumed(&init3);
  nn::AdamW opt3(resumed.named_parameters(), {.lr = 0.01, .weight_decay = 0.01});
  nn::EMA ema3(resumed, 0.9);
  const auto state = nn::load_training_checkpoint(dir.file("ckpt.safetensors"), resumed, opt3, run3, &ema3);
  CHECK(state.step == 4);
  CHECK(state.metadata.at("epoch") == "0");
  CHECK(opt3.step_count() == 4);
  train(resumed, opt3, run3, 4, 10);
  CHECK(same_state(resumed, straight));
  // A parameter that missed steps keeps its own update count across a checkpoint.
  Generator init4(7), run4(1);
  Net lag(&init4);
  nn::AdamW opt4(lag.named_parameters(), {.lr = 0.01});
  train(lag, opt4, run4, 0, 2);
  lag.parameters()[0].reset_grad();  // one step without a gradient for the first parameter
  opt4.step();
  REQUIRE(opt4.lagging_params().size() == 1);
  nn::save_training_checkpoint(dir.file("lag.safetensors"), lag, opt4, 3, run4);
  Generator init5(8), run5(2);
  Net lag2(&init5);
  nn::AdamW opt5(lag2.named_parameters(), {.lr = 0.01});
  nn::load_training_checkpoint(dir.file("lag.safetensors"), lag2, opt5, run5);
  CHECK(opt5.lagging_params() == opt4.lagging_params());
  train(lag, opt4, run4, 3, 5);
  train(lag2, opt5, run5, 3, 5);
  CHECK(same_state(lag2, lag));
  // A checkpoint for another optimizer type is refused.
  nn::SGD sgd(resumed.named_parameters(), {.lr = 0.1});
  CHECK_THROWS_WITH(nn::load_training_checkpoint(dir.file("ckpt.safetensors"), resumed, sgd, run3), Contains("was saved with AdamW but the optimizer is SGD"));
}

TEST_CASE("training checkpoints with bad metadata are refused before anything changes", "[nn][checkpoint][errors]") {
  TempDir dir;
  Generator init(3), run(4);
  Net net(&init);
  nn::Adam opt(net.named_parameters(), {.lr = 0.01});
  opt.set_step_count(5);
  const std::string good = dir.file("good.safetensors");
  nn::save_training_checkpoint(good, net, opt, 5, run);
  const nn::SafetensorsFile file = nn::load_safetensors(good);

  Generator init2(9), run2(10);
  Net target(&init2);
  nn::Adam opt2(target.named_parameters(), {.lr = 0.01});
  Net before = target;
  before.clone_parameters();
  // The same tensors under edited metadata, saved again: the checksums are recomputed, so only the
  // values themselves are wrong.
  auto expect_refused = [&](const std::string& key, const std::string& value, const std::string& message) {
    nn::Metadata meta = file.metadata;
    meta[key] = value;
    const std::string bad = dir.file("bad.safetensors");
    nn::save_safetensors(bad, file.tensors, meta);
    INFO(key << " = " << value);
    CHECK_THROWS_WITH(nn::load_training_checkpoint(bad, target, opt2, run2), Contains(message));
    CHECK(same_state(target, before));
    CHECK(opt2.step_count() == 0);
  };
  expect_refused("step", "-5", "malformed 'step' entry '-5'");
  expect_refused("step", "12abc", "malformed 'step' entry '12abc'");
  expect_refused("step", "9223372036854775807", "expected an integer in 0..2^62");
  expect_refused("optimizer.step", "-100", "malformed 'optimizer.step' entry '-100'");
  expect_refused("rng.seed", "-1", "malformed 'rng.seed' entry '-1'");
  expect_refused("optimizer.param_updates", "{\"fc1.weight\": -7}", "gives parameter 'fc1.weight' -7 updates after 5 steps");
  expect_refused("optimizer.param_updates", "{\"nope\": 1}", "names 'nope', not a parameter of the optimizer");
  expect_refused("optimizer.param_updates", "[1]", "is not a JSON object");
  nn::load_training_checkpoint(good, target, opt2, run2);  // the untouched file still loads
  CHECK(opt2.step_count() == 5);
}

TEST_CASE("loading refuses folders and FIFOs instead of reading garbage or blocking", "[nn][checkpoint][errors]") {
  TempDir dir;
  Net net;
  fs::create_directories(dir.file("folder.safetensors"));
  CHECK_THROWS_WITH(nn::load_module(net, dir.file("folder.safetensors")), Contains("is not a regular file"));
  REQUIRE(::mkfifo(dir.file("fifo").c_str(), 0600) == 0);
  CHECK_THROWS_WITH(nn::load_safetensors(dir.file("fifo")), Contains("is not a regular file"));
  CHECK_THROWS_WITH(nn::load_module(net, dir.file("none.safetensors")), Contains("cannot open"));
  // Writers refuse to replace (or block on) what is not a regular file: a FIFO, a device.
  CHECK_THROWS_WITH(nn::write_file_atomically(dir.file("fifo"), "{}"), Contains("'" + dir.file("fifo") + "' exists and is not a regular file"));
  CHECK_THROWS_WITH(nn::save_module(net, "/dev/null"), Contains("save: '/dev/null' exists and is not a regular file"));
  CHECK_THROWS_WITH(nn::output::CsvWriter(dir.file("fifo"), {"step"}), Contains("CsvWriter: '" + dir.file("fifo") + "' exists and is not a regular file"));
  CHECK(fs::is_character_file("/dev/null"));
  // Names and metadata go into a JSON header: they must be UTF-8. UTF-8 itself is fine.
  const Tensor w = zeros({2});
  CHECK_THROWS_WITH(nn::save_safetensors(dir.file("u.safetensors"), {{"caf\xe9", w}}), Contains("is not valid UTF-8"));
  CHECK_THROWS_WITH(nn::save_safetensors(dir.file("u.safetensors"), {{"w", w}}, {{"note", "\xc3"}}), Contains("metadata entry 'note'"));
  CHECK_THROWS_WITH(nn::save_safetensors(dir.file("u.safetensors"), {{"\xed\xa0\x80", w}}), Contains("is not valid UTF-8"));  // a surrogate
  CHECK_THROWS_WITH(nn::save_safetensors(dir.file("u.safetensors"), {{"\xc0\xaf", w}}), Contains("is not valid UTF-8"));  // overlong '/'
  nn::save_safetensors(dir.file("u.safetensors"), {{"caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80", w}}, {{"note", "\xc3\xa9"}});
  CHECK(nn::load_safetensors(dir.file("u.safetensors")).tensors[0].name == "caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80");
}

TEST_CASE("write_file_atomically replaces a file whole", "[nn][checkpoint]") {
  TempDir dir;
  const std::string path = dir.file("config.json");
  nn::write_file_atomically(path, "{\"a\": 1}\n");
  nn::write_file_atomically(path, "{}\n");
  CHECK(read_file(path) == "{}\n");
  int files = 0;
  for (const auto& e : fs::directory_iterator(dir.path)) files += e.is_regular_file();
  CHECK(files == 1);  // no temporaries left
  CHECK_THROWS_WITH(nn::write_file_atomically(dir.file("no/such/folder.json"), "x"), Contains("does not exist"));
  nn::write_file_atomically(dir.file("plain"), "x");
  CHECK_THROWS_WITH(nn::write_file_atomically(dir.file("plain/y.json"), "x"), Contains("is not a folder (a file of that name is in the way)"));
}

TEST_CASE("the header checksum catches a flipped digit in the metadata, and older files still load", "[nn][checkpoint][errors]") {
  TempDir dir;
  Generator init(3), run(4);
  Net net(&init);
  nn::Adam opt(net.named_parameters(), {.lr = 0.01});
  opt.set_step_count(5);
  run.set_state({4, 1234});
  const std::string good = dir.file("good.safetensors");
  nn::save_training_checkpoint(good, net, opt, 5, run, nullptr, {{"epoch_loss_sum", "2.5"}});
  const std::string bytes = read_file(good);

  Generator init2(9), run2(10);
  Net target(&init2);
  nn::Adam opt2(target.named_parameters(), {.lr = 0.01});
  Net before = target;
  before.clone_parameters();
  // One digit of a metadata value replaced by another: the header keeps its length and stays
  // valid JSON, and every value still parses -- only the checksum can tell.
  for (const std::string key : {"step", "rng.offset", "optimizer.step", "epoch_loss_sum", "tapegrad.crc32"}) {
    const std::string field = "\"" + key + "\":\"";
    const auto at = bytes.find(field);
    REQUIRE(at != std::string::npos);
    std::string flipped = bytes;
    char& digit = flipped[at + field.size()];
    REQUIRE(std::isdigit(static_cast<unsigned char>(digit)));
    digit = digit == '1' ? '2' : '1';
    const std::string bad = dir.file("flipped.safetensors");
    write_file(bad, flipped);
    INFO(key);
    CHECK_THROWS_WITH(nn::load_training_checkpoint(bad, target, opt2, run2),
                      Contains("load: '" + bad + "' is corrupt: its header") && Contains("does not match the checksum"));
    CHECK_THROWS_WITH(nn::load_safetensors(bad), Contains("does not match the checksum"));
    CHECK(same_state(target, before));
    CHECK(opt2.step_count() == 0);
  }
  // The untouched file loads.
  CHECK(nn::load_training_checkpoint(good, target, opt2, run2).step == 5);
  CHECK(opt2.step_count() == 5);
  CHECK(run2.state().offset == 1234);

  // A checkpoint written before the header checksum (format v1, no such entry) is read as before,
  // with its data checksum; a current one that lost the entry is refused.
  const std::string v1 = dir.file("v1.safetensors");
  write_file(v1, with_header(bytes, [](nlohmann::json& h) {
               h["__metadata__"].erase("tapegrad.header_crc32");
               h["__metadata__"]["format"] = "tapegrad-training-v1";
             }));
  Generator init3(11), run3(12);
  Net old_target(&init3);
  nn::Adam opt3(old_target.named_parameters(), {.lr = 0.01});
  CHECK(nn::load_training_checkpoint(v1, old_target, opt3, run3).step == 5);
  CHECK(same_state(old_target, net));
  const std::string stripped = dir.file("stripped.safetensors");
  write_file(stripped, with_header(bytes, [](nlohmann::json& h) { h["__metadata__"].erase("tapegrad.header_crc32"); }));
  CHECK_THROWS_WITH(nn::load_training_checkpoint(stripped, old_target, opt3, run3),
                    Contains("'" + stripped + "' is corrupt: a tapegrad-training-v2 checkpoint without its header checksum"));
  // Other files without it (older modules, other writers) load with the data checksum alone.
  nn::save_module(net, dir.file("m.safetensors"));
  write_file(dir.file("m.safetensors"), with_header(read_file(dir.file("m.safetensors")), [](nlohmann::json& h) {
               h["__metadata__"].erase("tapegrad.header_crc32");
             }));
  CHECK_NOTHROW(nn::load_module(old_target, dir.file("m.safetensors")));
  // The header stays plain safetensors: every metadata value a string.
  const nlohmann::json header = nlohmann::json::parse(bytes.substr(8, header_length(bytes)));  // (named: a temporary's member would dangle)
  for (const auto& [k, v] : header["__metadata__"].items()) CHECK(v.is_string());
}

TEST_CASE("a diverged state is not saved over the last training checkpoint", "[nn][checkpoint][errors]") {
  TempDir dir;
  Generator init(3), run(4);
  Net net(&init);
  nn::Adam opt(net.named_parameters(), {.lr = 0.01});
  const std::string path = dir.file("ckpt.safetensors");
  nn::save_training_checkpoint(path, net, opt, 1, run);
  const std::string before = read_file(path);
  {
    NoGradGuard no_grad;
    net.fc2.weight.narrow(0, 1, 1).fill_(std::numeric_limits<double>::quiet_NaN());
  }
  CHECK_THROWS_WITH(nn::save_training_checkpoint(path, net, opt, 2, run),
                    Contains("save: not writing '" + path + "' at step 2: tensor 'model.fc2.weight' holds nan") &&
                        Contains("try a smaller learning rate"));
  CHECK(read_file(path) == before);
}

TEST_CASE("a model with NaN or inf weights is not saved over the last good one", "[nn][checkpoint][errors]") {
  TempDir dir;
  Generator init(3);
  Net net(&init);
  const std::string path = dir.file("model.safetensors");
  nn::save_module(net, path);
  const std::string before = read_file(path);
  {
    NoGradGuard no_grad;
    net.fc1.bias.narrow(0, 2, 1).fill_(-std::numeric_limits<double>::infinity());
  }
  CHECK_THROWS_WITH(nn::save_module(net, path),
                    Equals("save: not writing '" + path + "': tensor 'fc1.bias' holds -inf (the run diverged; try a "
                           "smaller learning rate). The file already there, if any, is kept"));
  CHECK(read_file(path) == before);
  // A buffer may hold infinities on purpose.
  Masked masked;
  masked.mask = full({2, 2}, -std::numeric_limits<double>::infinity());
  CHECK_NOTHROW(nn::save_module(masked, dir.file("masked.safetensors")));
}

TEST_CASE("a buffer of infinities (an additive mask) does not stop a training checkpoint", "[nn][checkpoint]") {
  TempDir dir;
  Generator run(4);
  Masked net;
  net.mask = full({2, 2}, -std::numeric_limits<double>::infinity());
  nn::Adam opt(net.named_parameters(), {.lr = 0.01});
  const std::string path = dir.file("ckpt.safetensors");
  nn::save_training_checkpoint(path, net, opt, 1, run);
  Masked loaded;
  nn::Adam opt2(loaded.named_parameters(), {.lr = 0.01});
  loaded.mask = zeros({2, 2});
  nn::load_training_checkpoint(path, loaded, opt2, run);
  for (const float v : loaded.mask.to_vector<float>()) CHECK(v == -std::numeric_limits<float>::infinity());
}
