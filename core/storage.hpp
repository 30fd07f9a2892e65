// Storage: a 64-byte aligned buffer shared by a tensor and all of its views, with the version
// counter that in-place writes bump (saved tensors compare it to detect modification).
//
// Buffers come from a caching allocator: size-bucketed free lists of aligned blocks, because a
// fresh large allocation costs page faults that halve the speed of memory-bound ops.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>

namespace tg {

class Storage {
 public:
  // A new buffer of `nbytes` bytes (contents uninitialised).
  static std::shared_ptr<Storage> allocate(std::size_t nbytes);

  Storage(void* data, std::size_t nbytes, std::size_t capacity) noexcept
      : data_(data), nbytes_(nbytes), capacity_(capacity) {}
  ~Storage();
  Storage(const Storage&) = delete;
  Storage& operator=(const Storage&) = delete;

  void* data() const { return data_; }
  std::size_t nbytes() const { return nbytes_; }

  std::uint32_t version() const { return version_.load(std::memory_order_relaxed); }
  void bump_version() { version_.fetch_add(1, std::memory_order_relaxed); }

 private:
  void* data_;
  std::size_t nbytes_;
  std::size_t capacity_;  // the allocator's block size (>= nbytes)
  std::atomic<std::uint32_t> version_{0};
};

// The caching allocator behind Storage.
struct AllocatorStats {
  std::size_t bytes_in_use = 0;     // held by live storages
  std::size_t bytes_cached = 0;     // free blocks kept for reuse
  std::size_t peak_bytes_in_use = 0;
  std::uint64_t allocations = 0;    // requests served
  std::uint64_t cache_hits = 0;     // requests served from the cache
};
AllocatorStats allocator_stats();
// Returns all cached free blocks to the system.
void empty_allocator_cache();

}  // namespace tg
