/* -*- c++ -*- ----------------------------------------------------------
   engine_plugins: counter-based Gaussian noise keyed by
   (seed, step, attempt, atom tag). The same function as
   engine_plugins/nn/counter_noise.py (see its docstring for the spec):
   integers agree bit for bit, normals to the last ulp of log/cos.
------------------------------------------------------------------------- */

#ifndef LMP_EP_COUNTER_NOISE_H
#define LMP_EP_COUNTER_NOISE_H

#include <cmath>
#include <cstdint>

namespace LAMMPS_NS {
namespace EPNoise {

  constexpr uint64_t GOLDEN = 0x9E3779B97F4A7C15ULL;

  inline uint64_t mix64(uint64_t z)
  {
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
  }

  inline uint64_t key(uint64_t seed, uint64_t step, uint64_t attempt)
  {
    uint64_t k = mix64(seed + GOLDEN);
    k = mix64((k ^ step) + GOLDEN);
    return mix64((k ^ attempt) + GOLDEN);
  }

  inline double uniform(uint64_t key, uint64_t tag, uint64_t counter)
  {
    const uint64_t bits = mix64(key ^ mix64(tag * 8 + counter));
    return static_cast<double>((bits >> 11) + 1) * 0x1.0p-53;
  }

  // three standard normals for one atom
  inline void normal3(uint64_t key, uint64_t tag, double out[3])
  {
    constexpr double TWO_PI = 6.283185307179586476925286766559;
    for (int k = 0; k < 3; ++k) {
      const double u1 = uniform(key, tag, 2 * k);
      const double u2 = uniform(key, tag, 2 * k + 1);
      out[k] = std::sqrt(-2.0 * std::log(u1)) * std::cos(TWO_PI * u2);
    }
  }

}    // namespace EPNoise
}    // namespace LAMMPS_NS

#endif
