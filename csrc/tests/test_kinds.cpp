// Host test of the kinds header csrc/hsu_kinds.h (no torch): run by ctest (CMakeLists.txt, ctest: kinds).
//
//  1. the table: codes 0..kNumKinds-1, names, traits (those of hsu_kernels/kinds.py's KIND_TABLE, written out
//     here), KindTraits<KIND> and kind_info(code) agreeing, HSU_KIND_SWITCH turning each code into the same
//     compile-time KIND;
//  2. every run-time dispatch on the kind (kind_info, kind_name, HSU_KIND_SWITCH, and hsu_pair.h's phi_g_om,
//     phi_d2, pair_rt, careful_terms_rt, diag_term) raising std::invalid_argument naming the code for unknown
//     codes (past the table, negative, huge), never falling through to a kind;
//  3. a known kind where a dispatch cannot serve it (an angle kind without normalize, a log-sum kind on a
//     pair-sum path) raising too.
#include <cmath>
#include <cstdio>
#include <functional>
#include <stdexcept>
#include <string>

#include "../hsu_kinds.h"
#include "../hsu_pair.h"

namespace {

int g_checks = 0, g_failures = 0;

void expect(bool ok, const std::string& what) {
  ++g_checks;
  if (!ok) {
    ++g_failures;
    std::printf("FAIL %s\n", what.c_str());
  }
}

// `call` must throw std::invalid_argument whose message contains `needle`.
void expect_raises(const std::function<void()>& call, const std::string& needle, const std::string& what) {
  ++g_checks;
  try {
    call();
  } catch (const std::invalid_argument& e) {
    if (std::string(e.what()).find(needle) != std::string::npos) return;
    ++g_failures;
    std::printf("FAIL %s: raised '%s', which does not contain '%s'\n", what.c_str(), e.what(), needle.c_str());
    return;
  } catch (...) {
    ++g_failures;
    std::printf("FAIL %s: raised something other than std::invalid_argument\n", what.c_str());
    return;
  }
  ++g_failures;
  std::printf("FAIL %s: returned instead of raising\n", what.c_str());
}

struct Expected {
  const char* name;
  bool angle, power;
  double power_scale;
  bool logsum;
};

// hsu_kernels/kinds.py's KIND_TABLE, by code (tests/test_kinds_cpp.py checks the names and codes against it
// through the extension).
const Expected kTable[] = {{"riesz", false, true, 0.5, false},
                           {"log", false, false, 0.0, false},
                           {"angular", true, true, 1.0, false},
                           {"angular_log", true, false, 0.0, false},
                           {"gaussian", false, false, 0.0, true}};

void check_table() {
  expect(hsu::kNumKinds == 5, "kNumKinds == 5");
  expect(hsu::kRiesz == 0 && hsu::kLog == 1 && hsu::kAngular == 2 && hsu::kAngularLog == 3 && hsu::kGaussian == 4,
         "the enum's codes");
  for (int64_t k = 0; k < hsu::kNumKinds; ++k) {
    const Expected& x = kTable[k];
    const std::string tag = "kind " + std::to_string(k);
    expect(hsu::kind_known(k), tag + " known");
    expect(std::string(hsu::kKindNames[k]) == x.name && std::string(hsu::kind_name(k)) == x.name, tag + " name");
    const hsu::KindInfo info = hsu::kind_info(k);
    expect(info.angle == x.angle && info.power == x.power && info.power_scale == x.power_scale &&
               info.logsum == x.logsum,
           tag + " kind_info");
    // HSU_KIND_SWITCH gives the compile-time KIND of the code, and KindTraits<KIND> the same traits and name
    const bool same = HSU_KIND_SWITCH(k, KIND, [&] {
      using K = hsu::KindTraits<KIND>;
      return KIND == k && std::string(K::name) == x.name && K::angle == x.angle && K::power == x.power &&
             K::power_scale == x.power_scale && K::logsum == x.logsum;
    });
    expect(same, tag + " HSU_KIND_SWITCH and KindTraits");
  }
  static_assert(hsu::KindTraits<hsu::kRiesz>::power_scale == 0.5, "Riesz: d2^(-s/2)");
  static_assert(!hsu::kind_known(-1) && !hsu::kind_known(hsu::kNumKinds), "kind_known");
}

void check_unknown_codes() {
  for (int64_t code : {hsu::kNumKinds, int64_t(-1), int64_t(1000), hsu::kNumKinds + 1, int64_t(-1000000007)}) {
    const std::string needle = "unknown kind code " + std::to_string(code);
    const std::string tag = " (code " + std::to_string(code) + ")";
    expect(!hsu::kind_known(code), "kind_known" + tag);
    expect_raises([&] { hsu::kind_info(code); }, needle, "kind_info" + tag);
    expect_raises([&] { hsu::kind_name(code); }, needle, "kind_name" + tag);
    expect_raises([&] { HSU_KIND_SWITCH(code, KIND, [&] { return KIND; }); }, needle, "HSU_KIND_SWITCH" + tag);
    expect_raises([&] { hsu::kind_error(code); }, needle, "kind_error" + tag);
    for (bool norm : {true, false})
      for (bool hs : {false, true}) {
        const std::string flags = tag + " normalize=" + std::to_string(norm) + " half_space=" + std::to_string(hs);
        const hsu::Params<double> p{code, 1.0, 2.0, 1e-4, hs, norm};
        const hsu::Params<float> pf{code, 1.0f, 2.0f, 1e-4f, hs, norm};
        double f, df, e, cj, ci;
        float ef, cjf, cif;
        expect_raises([&] { hsu::phi_g_om(p, 0.25, 0.75, f, df); }, needle, "phi_g_om" + flags);
        expect_raises([&] { hsu::phi_g(p, 0.25, f, df); }, needle, "phi_g" + flags);
        expect_raises([&] { hsu::phi_d2(p, 1.5, f, df); }, needle, "phi_d2" + flags);
        expect_raises([&] { hsu::pair_rt(p, 1.0, 0.25, 1.0, 1.0, e, cj, ci); }, needle, "pair_rt double" + flags);
        expect_raises([&] { hsu::pair_rt(pf, 1.0f, 0.25f, 1.0f, 1.0f, ef, cjf, cif); }, needle,
                      "pair_rt float" + flags);
        expect_raises([&] { hsu::pair_rt(pf, 1.0f, 0.25, 1.0, 1.0, ef, cjf, cif); }, needle,
                      "pair_rt float/double" + flags);
        const hsu::CarefulGeom q{0.5, 1.5, 1.0};
        expect_raises([&] { hsu::careful_terms_rt(p, 1.0, q, e); }, needle, "careful_terms_rt" + flags);
        expect_raises([&] { hsu::diag_term(p, 0.25, e, ci); }, needle, "diag_term" + flags);
      }
  }
}

void check_misuse() {
  double f, df, e, cj, ci;
  for (int64_t kind : {hsu::kAngular, hsu::kAngularLog}) {
    const hsu::Params<double> p{kind, 1.0, 2.0, 1e-4, false, false};
    const std::string tag = std::string(" ") + hsu::kind_name(kind) + " normalize=false";
    const std::string needle = "angular kinds need normalize=True";
    expect_raises([&] { hsu::phi_d2(p, 1.5, f, df); }, needle, "phi_d2" + tag);
    expect_raises([&] { hsu::pair_rt(p, 1.0, 0.25, 1.0, 1.0, e, cj, ci); }, needle, "pair_rt" + tag);
    expect_raises([&] { hsu::careful_terms_rt(p, 1.0, hsu::CarefulGeom{0.5, 1.5, 1.0}, e); }, needle,
                  "careful_terms_rt" + tag);
    expect_raises([&] { hsu::diag_term(p, 0.25, e, ci); }, needle, "diag_term" + tag);
  }
  for (bool norm : {true, false}) {
    const hsu::Params<double> p{hsu::kGaussian, 1.0, 2.0, 1e-4, false, norm};
    const std::string tag = std::string(" gaussian normalize=") + std::to_string(norm);
    expect_raises([&] { hsu::pair_rt(p, 1.0, 0.25, 1.0, 1.0, e, cj, ci); }, "gauss_logs_rt", "pair_rt" + tag);
    expect_raises([&] { hsu::careful_terms_rt(p, 1.0, hsu::CarefulGeom{0.5, 1.5, 1.0}, e); }, "careful_logs",
                  "careful_terms_rt" + tag);
  }
  // and the known kinds still dispatch (their values are test_pair_header's business)
  for (int64_t kind = 0; kind < hsu::kNumKinds; ++kind) {
    const hsu::Params<double> p{kind, 1.0, 2.0, 1e-4, true, true};
    hsu::phi_g_om(p, 0.25, 0.75, f, df);
    hsu::diag_term(p, 0.25, e, ci);
    expect(std::isfinite(f) && std::isfinite(df) && std::isfinite(e) && std::isfinite(ci),
           std::string("known kind dispatches: ") + hsu::kind_name(kind));
  }
}

}  // namespace

int main() {
  check_table();
  check_unknown_codes();
  check_misuse();
  std::printf("%d checks, %d failures\n", g_checks, g_failures);
  return g_failures ? 1 : 0;
}
