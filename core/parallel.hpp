// Threading for kernels: one loop primitive with fixed chunking, and the thread-count controls.
//
// Determinism contract: parallel_for splits [0, n) into chunks whose boundaries depend only on n
// and the grain, never on the number of threads; a kernel that computes each chunk sequentially
// and combines per-chunk partial results in chunk order is bit-identical for any thread count.
#pragma once

#include <cstdint>
#include <type_traits>
#include <utility>

namespace tg {

// A non-owning reference to a callable (cheaper than std::function: no allocation).
template <class Sig>
class FunctionRef;
template <class R, class... Args>
class FunctionRef<R(Args...)> {
 public:
  template <class F>
    requires(!std::is_same_v<std::remove_cvref_t<F>, FunctionRef> && std::is_invocable_r_v<R, F&, Args...>)
  FunctionRef(F&& f) noexcept  // NOLINT(google-explicit-constructor)
      : obj_(const_cast<void*>(static_cast<const void*>(&f))),
        call_([](void* o, Args... a) -> R { return (*static_cast<std::remove_reference_t<F>*>(o))(std::forward<Args>(a)...); }) {}
  R operator()(Args... a) const { return call_(obj_, std::forward<Args>(a)...); }

 private:
  void* obj_;
  R (*call_)(void*, Args...);
};

// Runs body(begin, end) for the chunks [k*grain, min(n, (k+1)*grain)) of [0, n), in parallel.
// Runs inline when there is a single chunk.
void parallel_for(std::int64_t n, std::int64_t grain, FunctionRef<void(std::int64_t, std::int64_t)> body);

// The number of threads kernels run on in the calling context.
int num_threads();
// Limits kernels to n threads for the whole process (n >= 1); 0 restores the default (all cores).
void set_num_threads(int n);
// Runs fn with kernels limited to n threads (a scoped arena). n may exceed the core count: the work
// is then split as for n threads, but TBB runs at most one thread per core and warns on stderr
// that it ignores the request for more workers.
void with_threads(int n, FunctionRef<void()> fn);

}  // namespace tg
