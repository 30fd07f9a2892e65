#include "core/storage.hpp"

#include <algorithm>
#include <cstdlib>
#include <mutex>
#include <unordered_map>
#include <vector>

#include "core/error.hpp"

#if defined(__linux__)
#include <sys/mman.h>
#endif

#if defined(__SANITIZE_ADDRESS__)
#define TG_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define TG_ASAN 1
#endif
#endif

namespace tg {
namespace {

constexpr std::size_t kAlignment = 64;
constexpr std::size_t kMinBlock = 64;
constexpr std::size_t kHugePage = std::size_t{2} << 20;

// Size classes: 64 B, then four steps per power of two (x1, x1.25, x1.5, x1.75), so a block
// wastes at most 25% and a few dozen buckets cover everything.
std::size_t block_size(std::size_t nbytes) {
  if (nbytes <= kMinBlock) return kMinBlock;
  std::size_t pow2 = kMinBlock;
  while (pow2 * 2 <= nbytes) pow2 *= 2;
  const std::size_t step = pow2 / 4;
  const std::size_t size = (nbytes + step - 1) / step * step;
  return (size + kAlignment - 1) / kAlignment * kAlignment;
}

class CachingAllocator {
 public:
  void* allocate(std::size_t block) {
    {
      std::lock_guard lock(mutex_);
      ++stats_.allocations;
      if (caching_enabled()) {
        auto it = free_.find(block);
        if (it != free_.end() && !it->second.empty()) {
          void* p = it->second.back();
          it->second.pop_back();
          stats_.bytes_cached -= block;
          note_in_use(block);
          ++stats_.cache_hits;
          return p;
        }
      }
      note_in_use(block);
    }
    void* p = std::aligned_alloc(kAlignment, block);
    if (!p) {
      empty_cache();  // memory may be parked in the cache: release it and try once more
      p = std::aligned_alloc(kAlignment, block);
    }
    if (!p) {
      std::lock_guard lock(mutex_);
      stats_.bytes_in_use -= block;
      throw OutOfMemory(fmt::format("out of memory: could not allocate {} bytes for a tensor", block));
    }
#if defined(__linux__) && defined(MADV_HUGEPAGE)
    if (block >= 4 * kHugePage) madvise(p, block, MADV_HUGEPAGE);  // fewer page faults on big buffers
#endif
    return p;
  }

  void release(void* p, std::size_t block) {
    std::lock_guard lock(mutex_);
    stats_.bytes_in_use -= block;
    if (caching_enabled() && stats_.bytes_cached + block <= kMaxCachedBytes) {
      free_[block].push_back(p);
      stats_.bytes_cached += block;
      return;
    }
    std::free(p);
  }

  void empty_cache() {
    std::unordered_map<std::size_t, std::vector<void*>> blocks;
    {
      std::lock_guard lock(mutex_);
      blocks.swap(free_);
      stats_.bytes_cached = 0;
    }
    for (auto& [size, ptrs] : blocks)
      for (void* p : ptrs) std::free(p);
  }

  AllocatorStats stats() {
    std::lock_guard lock(mutex_);
    return stats_;
  }

 private:
  static constexpr std::size_t kMaxCachedBytes = std::size_t{4} << 30;

  static bool caching_enabled() {
#ifdef TG_ASAN
    return false;  // let AddressSanitizer see every use-after-free
#else
    static const bool enabled = [] {
      const char* env = std::getenv("TAPEGRAD_NO_ALLOC_CACHE");
      return !(env && *env && *env != '0');
    }();
    return enabled;
#endif
  }
  void note_in_use(std::size_t block) {
    stats_.bytes_in_use += block;
    stats_.peak_bytes_in_use = std::max(stats_.peak_bytes_in_use, stats_.bytes_in_use);
  }

  std::mutex mutex_;
  std::unordered_map<std::size_t, std::vector<void*>> free_;  // block size -> free blocks
  AllocatorStats stats_;
};

CachingAllocator& allocator() {
  static auto* a = new CachingAllocator();  // leaked on purpose: storages may die after main()
  return *a;
}

}  // namespace

std::shared_ptr<Storage> Storage::allocate(std::size_t nbytes) {
  const std::size_t block = block_size(nbytes);
  void* p = allocator().allocate(block);
  return std::make_shared<Storage>(p, nbytes, block);
}

Storage::~Storage() { allocator().release(data_, capacity_); }

AllocatorStats allocator_stats() { return allocator().stats(); }
void empty_allocator_cache() { allocator().empty_cache(); }

}  // namespace tg
