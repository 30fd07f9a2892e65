#include "nn/interrupt.hpp"

#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <utility>

#include "core/error.hpp"

namespace tg::nn {
namespace {

std::atomic<int> g_signal{0};          // the first signal received, 0 when none
std::atomic<bool> g_installed{false};  // a StopOnSignal is alive
struct sigaction g_old_int, g_old_term;

static_assert(std::atomic<int>::is_always_lock_free, "the flag is set from a signal handler");

extern "C" void on_stop_signal(int sig) {
  int none = 0;
  if (!g_signal.compare_exchange_strong(none, sig)) {
    // The second signal: the default action now (terminate), as the user asked twice.
    ::signal(sig, SIG_DFL);
    ::raise(sig);
    return;
  }
  static const char msg[] =
      "\nstop requested: finishing the current step and writing the checkpoint (signal again to quit at once)\n";
  const ssize_t ignored = ::write(STDERR_FILENO, msg, sizeof msg - 1);
  (void)ignored;
}

}  // namespace

StopOnSignal::StopOnSignal() {
  TG_CHECK(!g_installed.exchange(true), "StopOnSignal: only one may be alive at a time");
  g_signal = 0;
  struct sigaction sa {};
  sa.sa_handler = on_stop_signal;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = SA_RESTART;  // a blocking read or write in progress continues
  // A signal the process ignores stays ignored (a shell ignores SIGINT for its background jobs).
  for (auto [sig, old] : {std::pair{SIGINT, &g_old_int}, std::pair{SIGTERM, &g_old_term}}) {
    ::sigaction(sig, nullptr, old);
    if (old->sa_handler != SIG_IGN) ::sigaction(sig, &sa, nullptr);
  }
}

StopOnSignal::~StopOnSignal() {
  ::sigaction(SIGINT, &g_old_int, nullptr);
  ::sigaction(SIGTERM, &g_old_term, nullptr);
  g_installed = false;
}

bool stop_requested() { return g_signal.load(std::memory_order_relaxed) != 0; }
int stop_signal() { return g_signal.load(std::memory_order_relaxed); }

}  // namespace tg::nn
