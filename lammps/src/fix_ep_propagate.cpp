/* ----------------------------------------------------------------------
   engine_plugins: LAMMPS fix ep/propagate for role 'propagator' (and
   'corrector') artifacts: each timestep is one learned jump of delta_tau.

   The model is the flow's vector field (engine_plugins/export/roles.py):

     forward(x_t[N,3], x_cond[N,3], types[N], edge_index[2,E], edge_shift[E,3],
             t (0-d), temperature[N], n_local) -> velocity[N,3]

   and this fix owns the ODE loop (engine_plugins/methods/propagator/__init__.py):

     x_0 = x_cond + sigma_i z_i,   z_i = counter_normal(seed, step, attempt, tag_i)
     euler: x_{k+1} = x_k + h v(x_k, k h)                              h = 1/K
     heun:  x' = x_k + h v(x_k, t_k); x_{k+1} = x_k + h/2 (v(x_k, t_k) + v(x', t_k + h))
     d_i = x_K,i - x_cond,i minus its mass-weighted mean over the group

   Graph: built once per jump on the current positions, from a full neighbor
   list with ghost neighbors (owned atoms are nodes 0..nlocal-1; ghosts that
   are periodic images of owned atoms are folded onto them with edge shifts,
   other ghosts are explicit nodes after them; with L message-passing layers
   only nodes up to L cutoff-hops from an owned atom). The ghost cutoff is
   raised to L x cutoff + skin. Ghosts get the same prior noise as their owners
   (the key is the atom tag), and their displacement x_t - x_cond is refreshed
   by forward communication after every update of the owned atoms, so results
   do not depend on the number of MPI ranks.

   Every step forces reneighboring (next_reneighbor), so the neighbor list of
   the next jump is built on exactly the positions the jump starts from.
------------------------------------------------------------------------- */

#include "fix_ep_propagate.h"

#include "atom.h"
#include "comm.h"
#include "domain.h"
#include "error.h"
#include "force.h"
#include "json.h"
#include "memory.h"
#include "modify.h"
#include "neigh_list.h"
#include "neighbor.h"
#include "pair.h"
#include "update.h"
#include "utils.h"

#include "ep_counter_noise.h"

#include <ATen/Parallel.h>
#include <caffe2/serialize/inline_container.h>
#include <torch/cuda.h>
#include <torch/script.h>
#include <torch/version.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <map>
#include <set>
#include <unordered_map>

using namespace LAMMPS_NS;
using namespace FixConst;

namespace {

constexpr const char *STYLE = "fix ep/propagate";
constexpr const char *METADATA_FILE = "engine_plugins_metadata.json";
constexpr const char *FORMAT_NAME = "engine_plugins.artifact";
constexpr int SCHEMA_VERSION = 1;

// attempt offset of the corrector's noise stream (contract: 2**20)
constexpr uint64_t CORRECTOR_ATTEMPT_OFFSET = uint64_t(1) << 20;
// attempt offset between a corrector's passes (contract: pass p draws with offset + p * 2**16)
constexpr uint64_t PASS_ATTEMPT_STRIDE = uint64_t(1) << 16;
constexpr int MAX_PASSES = 16;

// Boltzmann constant in eV/K, as engine_plugins/methods/propagator/prior.py
constexpr double KB_EV_PER_K = 8.617333262e-5;

// same tables as engine_plugins/units.py
const std::map<std::string, double> LENGTH_TO_NM = {
    {"nm", 1.0},
    {"angstrom", 0.1},
    {"bohr", 0.052917721090380},
};
const std::map<std::string, double> TIME_TO_PS = {
    {"fs", 1.0e-3},
    {"ps", 1.0},
    {"ns", 1.0e3},
};

// length and time units of the LAMMPS unit styles this fix accepts
const std::map<std::string, std::pair<std::string, std::string>> LAMMPS_UNITS = {
    {"metal", {"angstrom", "ps"}},
    {"real", {"angstrom", "fs"}},
};

// keywords of the fix (they end the list of type names)
const std::set<std::string> KEYWORDS = {"types",        "temp",     "seed",   "corrector",
                                        "steps",        "solver",   "max_attempts",
                                        "max_disp",     "timestep", "device",   "threads",
                                        "prior_scale",  "contact_rounds", "corrector_passes"};

// which LAMMPS style of engine_plugins runs each artifact role
const std::map<std::string, std::string> ROLE_STYLE = {
    {"pseudo_force", "pair_style ep/torch"},
    {"propagator", "fix ep/propagate"},
    {"corrector", "the corrector keyword of fix ep/propagate"},
    {"backmapper", ""},
    {"cg_generator", ""},
};

std::string first_line(const std::string &text)
{
  auto pos = text.find('\n');
  std::string line = (pos == std::string::npos) ? text : text.substr(0, pos);
  if (line.size() > 300) line = line.substr(0, 300) + "...";
  return line;
}

std::string join_names(const std::vector<std::string> &names)
{
  std::string out;
  for (std::size_t i = 0; i < names.size(); ++i) {
    if (i) out += ' ';
    if (out.size() > 300) return out + "...";
    out += names[i];
  }
  return out;
}

}    // namespace

/* ----------------------------------------------------------------------
   one artifact: metadata, engine-side settings, libtorch module, and the
   constant inputs of the current flow (graph, x_cond, types, temperature)
------------------------------------------------------------------------- */

struct FixEPPropagate::Model {
  std::string path, role, method, dtype_name, periodicity, length_unit, time_unit, solver;
  std::vector<std::string> type_names;
  double cutoff_model = 0.0;    // model length units
  int layers = 1;
  double delta_tau = 0.0;    // model time units (propagator only)
  double t_lo = 0.0, t_hi = 0.0;
  int flow_steps = 1;
  std::vector<double> scale, mass;    // prior, per model type
  double max_disp_meta = -1.0;        // model length units, < 0: none in the metadata
  // contact redraw (role_fields.contact): squared shortest distance per model type pair
  // (model length units, row-major [type_i * ntypes + type_j], 0: none) and rounds per jump
  std::vector<double> contact_sq;
  int contact_rounds = 0;
  int max_attempts_meta = 0;          // 0: none in the metadata
  int passes = 1;                     // corrector: role_fields.passes (the loop again per pass)

  // engine side
  double length_factor = 1.0;    // LAMMPS length -> model length
  double angstrom_factor = 1.0;  // angstrom -> model length (prior widths, max_displacement)
  double cutoff = 0.0;           // LAMMPS length units
  std::vector<int> type_map;     // LAMMPS type -> model type
  std::vector<double> sigma;     // LAMMPS type -> prior width (model length units)
  double max_disp = -1.0;        // model length units, <= 0: no bound
  int steps = 1;
  bool heun = false;

  torch::jit::Module module;
  torch::Device device{torch::kCPU};
  torch::ScalarType dtype{torch::kFloat64};

  // inputs of the current flow
  torch::Tensor x_cond, types, edge_index, edge_shift, temperature;
  std::vector<double> xc_buf, xt_buf, vel_buf;
  std::vector<int64_t> type_buf, edge_buf;
  std::vector<torch::jit::IValue> inputs;
};

/* ---------------------------------------------------------------------- */

FixEPPropagate::FixEPPropagate(LAMMPS *lmp, int narg, char **arg) :
    Fix(lmp, narg, arg), list(nullptr), temperature(-1.0), seed(0), steps_override(0),
    max_attempts(0), contact_rounds_input(-1), passes_input(-1), max_disp(-1.0), set_timestep(false),
    device_request("auto"), device_index(-1), num_threads(1), disp(nullptr), disp_trial(nullptr),
    attempt_arr(nullptr), comm_array(nullptr), nmax_disp(0), ghost_owner_build(-1),
    total_redraws(0.0), last_redraws(0.0), last_max_disp(0.0), num_jumps(0.0),
    total_corrector_redraws(0.0), total_contact_rounds(0.0), contact_atoms(0.0), contact_left(0.0)
{
  const std::string usage =
      "expected 'fix ID group ep/propagate MODEL.pt types NAME1 ... NAMEntypes temp T seed S "
      "[corrector MODEL2.pt|none] [steps K] [solver euler|heun] [max_attempts N] [max_disp D] "
      "[timestep check|set] [device cpu|cuda|auto] [threads N] [prior_scale NAME S ...] "
      "[contact_rounds N] [corrector_passes N]'";
  if (narg < 4) error->all(FLERR, "Illegal fix ep/propagate command: {}", usage);

  time_integrate = 1;
  force_reneighbor = 1;
  next_reneighbor = -1;
  comm_forward = 3;
  scalar_flag = 1;
  vector_flag = 1;
  size_vector = 7;
  global_freq = 1;
  extscalar = 0;
  extvector = 0;
  dynamic_group_allow = 0;

  const std::string model_path = arg[3];
  std::string corrector_path;
  bool have_types = false, have_seed = false;
  const int ntypes = atom->ntypes;

  int iarg = 4;
  while (iarg < narg) {
    const std::string keyword = arg[iarg];
    if (keyword == "types") {
      // names up to the next keyword; exactly one per LAMMPS type
      int n = 0;
      type_args.assign(1, "");
      while (iarg + 1 + n < narg && KEYWORDS.count(arg[iarg + 1 + n]) == 0)
        type_args.emplace_back(arg[iarg + 1 + n++]);
      if (n != ntypes)
        error->all(FLERR,
                   "fix ep/propagate types: got {} name(s) for {} LAMMPS atom type(s); give one "
                   "model type name per LAMMPS type, in LAMMPS type order ('types NAME1 ... "
                   "NAME{}')",
                   n, ntypes, ntypes);
      have_types = true;
      iarg += 1 + n;
    } else if (keyword == "temp") {
      if (iarg + 2 > narg) utils::missing_cmd_args(FLERR, "fix ep/propagate temp", error);
      temperature = utils::numeric(FLERR, arg[iarg + 1], false, lmp);
      if (!(temperature > 0.0) || !std::isfinite(temperature))
        error->all(FLERR, "Illegal fix ep/propagate temp {}: use a temperature > 0 (K)",
                   arg[iarg + 1]);
      iarg += 2;
    } else if (keyword == "seed") {
      if (iarg + 2 > narg) utils::missing_cmd_args(FLERR, "fix ep/propagate seed", error);
      const bigint s = utils::bnumeric(FLERR, arg[iarg + 1], false, lmp);
      if (s < 0) error->all(FLERR, "Illegal fix ep/propagate seed {}: use an integer >= 0", s);
      seed = static_cast<uint64_t>(s);
      have_seed = true;
      iarg += 2;
    } else if (keyword == "corrector") {
      if (iarg + 2 > narg) utils::missing_cmd_args(FLERR, "fix ep/propagate corrector", error);
      corrector_path = arg[iarg + 1];
      if (corrector_path == "none" || corrector_path == "NULL") corrector_path.clear();
      iarg += 2;
    } else if (keyword == "steps") {
      if (iarg + 2 > narg) utils::missing_cmd_args(FLERR, "fix ep/propagate steps", error);
      steps_override = utils::inumeric(FLERR, arg[iarg + 1], false, lmp);
      if (steps_override < 1)
        error->all(FLERR, "Illegal fix ep/propagate steps {}: use a number of flow steps >= 1",
                   steps_override);
      iarg += 2;
    } else if (keyword == "solver") {
      if (iarg + 2 > narg) utils::missing_cmd_args(FLERR, "fix ep/propagate solver", error);
      solver_override = arg[iarg + 1];
      if (solver_override != "euler" && solver_override != "heun")
        error->all(FLERR, "Illegal fix ep/propagate solver '{}': use 'solver euler' or 'solver heun'",
                   solver_override);
      iarg += 2;
    } else if (keyword == "max_attempts") {
      if (iarg + 2 > narg) utils::missing_cmd_args(FLERR, "fix ep/propagate max_attempts", error);
      max_attempts = utils::inumeric(FLERR, arg[iarg + 1], false, lmp);
      if (max_attempts < 1)
        error->all(FLERR, "Illegal fix ep/propagate max_attempts {}: use a number >= 1",
                   max_attempts);
      iarg += 2;
    } else if (keyword == "max_disp") {
      if (iarg + 2 > narg) utils::missing_cmd_args(FLERR, "fix ep/propagate max_disp", error);
      max_disp = utils::numeric(FLERR, arg[iarg + 1], false, lmp);
      if (!(max_disp > 0.0))
        error->all(FLERR, "Illegal fix ep/propagate max_disp {}: use a length > 0 (LAMMPS units)",
                   arg[iarg + 1]);
      iarg += 2;
    } else if (keyword == "timestep") {
      if (iarg + 2 > narg) utils::missing_cmd_args(FLERR, "fix ep/propagate timestep", error);
      const std::string mode = arg[iarg + 1];
      if (mode != "check" && mode != "set")
        error->all(FLERR,
                   "Illegal fix ep/propagate timestep '{}': use 'timestep check' (stop when the "
                   "LAMMPS timestep differs from the model's delta_tau) or 'timestep set' (set it)",
                   mode);
      set_timestep = mode == "set";
      iarg += 2;
    } else if (keyword == "device") {
      if (iarg + 2 > narg) utils::missing_cmd_args(FLERR, "fix ep/propagate device", error);
      device_request = arg[iarg + 1];
      if (device_request != "cpu" && device_request != "cuda" && device_request != "auto")
        error->all(FLERR,
                   "Illegal fix ep/propagate device '{}': use 'device cpu', 'device cuda' or "
                   "'device auto' (CUDA when libtorch sees a GPU)",
                   device_request);
      iarg += 2;
    } else if (keyword == "prior_scale") {
      if (iarg + 3 > narg) utils::missing_cmd_args(FLERR, "fix ep/propagate prior_scale", error);
      const double value = utils::numeric(FLERR, arg[iarg + 2], false, lmp);
      if (!std::isfinite(value) || value < 0.0)
        error->all(FLERR,
                   "Illegal fix ep/propagate prior_scale {} {}: use a model type name and a finite "
                   "scale >= 0 (e.g. 'prior_scale Li 6')",
                   arg[iarg + 1], arg[iarg + 2]);
      prior_scale_override.emplace_back(arg[iarg + 1], value);
      iarg += 3;
    } else if (keyword == "contact_rounds") {
      if (iarg + 2 > narg) utils::missing_cmd_args(FLERR, "fix ep/propagate contact_rounds", error);
      contact_rounds_input = utils::inumeric(FLERR, arg[iarg + 1], false, lmp);
      if (contact_rounds_input < 0)
        error->all(FLERR,
                   "Illegal fix ep/propagate contact_rounds {}: use a number >= 0 (0 switches the "
                   "contact redraw off)",
                   contact_rounds_input);
      iarg += 2;
    } else if (keyword == "corrector_passes") {
      if (iarg + 2 > narg) utils::missing_cmd_args(FLERR, "fix ep/propagate corrector_passes", error);
      passes_input = utils::inumeric(FLERR, arg[iarg + 1], false, lmp);
      if (passes_input < 1 || passes_input > MAX_PASSES)
        error->all(FLERR,
                   "Illegal fix ep/propagate corrector_passes {}: use a number of passes in 1..{}",
                   passes_input, MAX_PASSES);
      iarg += 2;
    } else if (keyword == "threads") {
      if (iarg + 2 > narg) utils::missing_cmd_args(FLERR, "fix ep/propagate threads", error);
      num_threads = utils::inumeric(FLERR, arg[iarg + 1], false, lmp);
      if (num_threads < 1)
        error->all(FLERR, "Illegal fix ep/propagate threads {}: use a number >= 1", num_threads);
      iarg += 2;
    } else {
      error->all(FLERR,
                 "Unknown fix ep/propagate keyword '{}': the keywords are types, temp, seed, "
                 "corrector, steps, solver, max_attempts, max_disp, timestep, device, threads, "
                 "prior_scale, contact_rounds, corrector_passes ({})",
                 keyword, usage);
    }
  }

  if (!have_types)
    error->all(FLERR,
               "fix ep/propagate: missing 'types NAME1 ... NAME{}' (the model type name of each "
               "LAMMPS atom type, in LAMMPS type order; 'engine-plugins inspect {}' lists the "
               "model's names). Fix: add the types keyword",
               ntypes, model_path);
  if (temperature <= 0.0)
    error->all(FLERR,
               "fix ep/propagate: missing 'temp T' (the temperature in K the model is conditioned "
               "on and the prior width is drawn at). Fix: add e.g. 'temp 300'");
  if (!have_seed)
    error->all(FLERR,
               "fix ep/propagate: missing 'seed S' (the key of the per-atom noise; the same seed "
               "gives the same trajectory on any number of ranks). Fix: add e.g. 'seed 12345'");

  const std::string style = update->unit_style;
  if (LAMMPS_UNITS.count(style) == 0)
    error->all(FLERR,
               "fix ep/propagate supports 'units metal' and 'units real' (the Maxwell-Boltzmann "
               "prior needs temperatures in K and masses in amu), not 'units {}'. Fix: use one of "
               "those unit styles",
               style);

  // device: with several ranks per node, ranks share the node's GPUs round-robin

  const bool have_cuda = torch::cuda::is_available();
  if (device_request == "cuda" && !have_cuda)
    error->all(FLERR,
               "fix ep/propagate device cuda: libtorch sees no CUDA device "
               "(torch::cuda::is_available() is false). Fix: use 'device cpu' or 'device auto'");
  device_index = -1;
  if (device_request == "cuda" || (device_request == "auto" && have_cuda)) {
    MPI_Comm shared;
    int local_rank = 0;
    MPI_Comm_split_type(world, MPI_COMM_TYPE_SHARED, 0, MPI_INFO_NULL, &shared);
    MPI_Comm_rank(shared, &local_rank);
    MPI_Comm_free(&shared);
    const int ndevices = static_cast<int>(torch::cuda::device_count());
    device_index = local_rank % ndevices;
  }
  at::set_num_threads(num_threads);

  propagator = load_model(model_path, "propagator");
  if (!corrector_path.empty()) corrector = load_model(corrector_path, "corrector");
  if (passes_input > 0) {
    if (!corrector)
      error->all(FLERR,
                 "fix ep/propagate corrector_passes {}: there is no corrector. Fix: add "
                 "'corrector MODEL.pt', or drop corrector_passes",
                 passes_input);
    corrector->passes = passes_input;
  }
  if (contact_rounds_input >= 0) propagator->contact_rounds = contact_rounds_input;
  if (std::none_of(propagator->contact_sq.begin(), propagator->contact_sq.end(),
                   [](double v) { return v > 0.0; }))
    propagator->contact_rounds = 0;
  if (comm->me == 0) {
    if (propagator->contact_rounds > 0) {
      std::string pairs;
      const int nt = static_cast<int>(propagator->type_names.size());
      for (int a = 0; a < nt; a++)
        for (int b = a; b < nt; b++)
          if (propagator->contact_sq[a * nt + b] > 0.0)
            pairs += fmt::format("{}{}-{} {:.6g}", pairs.empty() ? "" : ", ",
                                 propagator->type_names[a], propagator->type_names[b],
                                 std::sqrt(propagator->contact_sq[a * nt + b]));
      utils::logmesg(lmp,
                     "ep/propagate: contact redraw: up to {} round(s) per jump for atoms closer "
                     "than ({}): {}\n",
                     propagator->contact_rounds, propagator->length_unit, pairs);
    } else if (contact_rounds_input > 0) {
      error->warning(FLERR,
                     "fix ep/propagate contact_rounds {}: model '{}' has no role_fields.contact "
                     "distances, so there is no contact redraw",
                     contact_rounds_input, model_path);
    }
  }

  for (Model *m : {propagator.get(), corrector.get()}) {
    if (!m) continue;
    if (m->role == "propagator" && steps_override > 0) m->steps = steps_override;
    if (m->role == "propagator" && !solver_override.empty()) m->heun = solver_override == "heun";
    if (max_disp > 0.0) m->max_disp = max_disp * m->length_factor;
    if (max_attempts == 0) max_attempts = m->max_attempts_meta;
    if (comm->me == 0) {
      utils::logmesg(lmp,
                     "ep/propagate: {} {} (method {}): types {}; cutoff {} {}; {} "
                     "message-passing layer(s); dtype {}; {} flow step(s), solver {}; "
                     "temperature range {}..{} K; device {}{}\n",
                     m->role, m->path, m->method, join_names(m->type_names), m->cutoff_model,
                     m->length_unit, m->layers, m->dtype_name, m->steps,
                     m->heun ? "heun" : "euler", m->t_lo, m->t_hi, m->device.str(),
                     m->passes > 1 ? fmt::format("; {} passes per jump", m->passes) : "");
      std::string widths;
      for (int t = 1; t <= ntypes; t++)
        widths += fmt::format("{}{}={:.6g}", t > 1 ? " " : "", type_args[t], m->sigma[t]);
      utils::logmesg(lmp, "ep/propagate: {} prior widths at {} K ({}): {}; max displacement {}\n",
                     m->role, temperature, m->length_unit, widths,
                     m->max_disp > 0.0 ? fmt::format("{} {}", m->max_disp, m->length_unit)
                                       : std::string("none (non-finite check only)"));
    }
    if (comm->me == 0 && (temperature < m->t_lo || temperature > m->t_hi))
      error->warning(FLERR,
                     "fix ep/propagate: temp {} K is outside the temperature range {}..{} K that "
                     "{} model '{}' was trained on; its jumps are an extrapolation",
                     temperature, m->t_lo, m->t_hi, m->role, m->path);
  }
  if (max_attempts == 0) max_attempts = 10;
  if (corrector && corrector->passes > 1 &&
      static_cast<uint64_t>(max_attempts) >= PASS_ATTEMPT_STRIDE)
    error->all(FLERR,
               "fix ep/propagate: max_attempts {} would reach the next corrector pass's noise "
               "stream ({}). Fix: lower max_attempts",
               max_attempts, PASS_ATTEMPT_STRIDE);
}

/* ---------------------------------------------------------------------- */

FixEPPropagate::~FixEPPropagate()
{
  memory->destroy(disp);
  memory->destroy(disp_trial);
  memory->destroy(attempt_arr);
}

/* ---------------------------------------------------------------------- */

int FixEPPropagate::setmask()
{
  int mask = 0;
  mask |= INITIAL_INTEGRATE;
  return mask;
}

/* ----------------------------------------------------------------------
   read and check the artifact metadata, then load the TorchScript module
------------------------------------------------------------------------- */

std::unique_ptr<FixEPPropagate::Model> FixEPPropagate::load_model(const std::string &path,
                                                                  const std::string &want_role)
{
  auto m = std::make_unique<Model>();
  m->path = path;
  if (device_index >= 0) m->device = torch::Device(torch::kCUDA, device_index);
  const std::string what = want_role == "propagator" ? "model" : "corrector model";

  if (!platform::file_is_readable(path))
    error->all(FLERR,
               "fix ep/propagate: cannot read {} file '{}' (missing or not readable). Fix: check "
               "the path; models are written by engine_plugins.export.export_artifact",
               what, path);

  std::string text, problem;
  bool has_metadata = false;
  try {
    caffe2::serialize::PyTorchStreamReader reader(path);
    const std::string record = std::string("extra/") + METADATA_FILE;
    if (reader.hasRecord(record)) {
      auto data = reader.getRecord(record);
      text.assign(static_cast<const char *>(std::get<0>(data).get()), std::get<1>(data));
      has_metadata = true;
    }
  } catch (const c10::Error &e) {
    problem = first_line(e.what_without_backtrace());
  } catch (const std::exception &e) {
    problem = first_line(e.what());
  }
  if (!problem.empty())
    error->all(FLERR,
               "fix ep/propagate: '{}' is not a TorchScript model file (corrupt or truncated: {}). "
               "Fix: re-export the model with engine_plugins.export.export_artifact",
               path, problem);
  if (!has_metadata)
    error->all(FLERR,
               "fix ep/propagate: '{}' is a TorchScript file without {}, so not an artifact of "
               "engine_plugins. Fix: export the model with engine_plugins.export.export_artifact",
               path, METADATA_FILE);

  json meta;
  try {
    meta = json::parse(text);
  } catch (const std::exception &e) {
    error->all(FLERR,
               "fix ep/propagate: '{}': artifact metadata is not valid JSON ({}). Fix: re-export "
               "the model",
               path, first_line(e.what()));
  }
  if (!meta.is_object())
    error->all(FLERR,
               "fix ep/propagate: '{}': artifact metadata is not a JSON object. Fix: re-export "
               "the model",
               path);

  auto bad = [&](const std::string &field, const std::string &problem_text,
                 const std::string &fix) {
    error->all(FLERR, "fix ep/propagate: '{}': artifact metadata field '{}' {}. Fix: {}", path,
               field, problem_text, fix);
  };
  auto get_string = [&](const json &obj, const char *field, const char *fallback) -> std::string {
    if (!obj.contains(field)) {
      if (fallback) return fallback;
      bad(field, "is missing", "re-export the model with engine_plugins");
    }
    if (!obj[field].is_string()) bad(field, "is not a string", "re-export the model");
    return obj[field].get<std::string>();
  };

  const std::string format = meta.contains("format") && meta["format"].is_string()
      ? meta["format"].get<std::string>()
      : std::string("(missing)");
  if (format != FORMAT_NAME)
    bad("format",
        fmt::format("is '{}', not '{}', so this is not an engine_plugins artifact", format,
                    FORMAT_NAME),
        "export the model with engine_plugins.export.export_artifact");
  if (!meta.contains("schema_version") || !meta["schema_version"].is_number_integer())
    bad("schema_version", "is missing or not an integer", "re-export the model with engine_plugins");
  const int version = meta["schema_version"].get<int>();
  if (version > SCHEMA_VERSION)
    bad("schema_version",
        fmt::format("is {}, newer than this plugin reads (up to {})", version, SCHEMA_VERSION),
        "upgrade engine_plugins and rebuild the plugin (python -m "
        "engine_plugins.engines.lammps_build --force), or re-export the model with this version");
  if (version < 1) bad("schema_version", fmt::format("is {}", version), "re-export the model");

  m->role = get_string(meta, "role", nullptr);
  if (m->role != want_role) {
    auto found = ROLE_STYLE.find(m->role);
    const std::string runs_with = (found == ROLE_STYLE.end() || found->second.empty())
        ? std::string("no LAMMPS style of engine_plugins")
        : found->second;
    if (want_role == "propagator")
      error->all(FLERR,
                 "fix ep/propagate: model '{}' has role '{}' (LAMMPS runs it with {}); fix "
                 "ep/propagate needs a model with role 'propagator' (and 'corrector MODEL' a "
                 "model with role 'corrector'). Fix: export the flow-matching propagator with "
                 "role 'propagator' and pass that file",
                 path, m->role, runs_with);
    else
      error->all(FLERR,
                 "fix ep/propagate: corrector model '{}' has role '{}' (LAMMPS runs it with {}); "
                 "the corrector keyword needs a model with role 'corrector'. Fix: pass a "
                 "corrector artifact, or drop the corrector keyword",
                 path, m->role, runs_with);
  }

  m->method = get_string(meta, "method", "unknown");

  if (!meta.contains("type_names") || !meta["type_names"].is_array() || meta["type_names"].empty())
    bad("type_names", "is missing or not a non-empty list", "re-export the model");
  for (const auto &name : meta["type_names"]) {
    if (!name.is_string() || name.get<std::string>().empty())
      bad("type_names", "contains an entry that is not a non-empty string", "re-export the model");
    m->type_names.push_back(name.get<std::string>());
  }

  if (!meta.contains("cutoff") || !meta["cutoff"].is_number() ||
      !(meta["cutoff"].get<double>() > 0.0))
    bad("cutoff", "is missing or not a positive number", "re-export the model");
  m->cutoff_model = meta["cutoff"].get<double>();

  if (!meta.contains("num_message_passing_layers") ||
      !meta["num_message_passing_layers"].is_number_integer() ||
      meta["num_message_passing_layers"].get<int>() < 0)
    bad("num_message_passing_layers", "is missing or not an integer >= 0", "re-export the model");
  m->layers = std::max(1, meta["num_message_passing_layers"].get<int>());

  m->dtype_name = get_string(meta, "dtype", "float64");
  if (m->dtype_name == "float64")
    m->dtype = torch::kFloat64;
  else if (m->dtype_name == "float32")
    m->dtype = torch::kFloat32;
  else
    bad("dtype", fmt::format("is '{}'", m->dtype_name), "export the model as float32 or float64");

  m->periodicity = get_string(meta, "periodicity", "any");
  if (m->periodicity != "periodic" && m->periodicity != "nonperiodic" && m->periodicity != "any")
    bad("periodicity", fmt::format("is '{}'", m->periodicity),
        "use 'periodic', 'nonperiodic' or 'any'");

  if (!meta.contains("units") || !meta["units"].is_object())
    bad("units", "is missing or not an object", "re-export the model with its units");
  const auto &units = meta["units"];
  for (const char *kind : {"length", "time"})
    if (!units.contains(kind) || !units[kind].is_string())
      bad(std::string("units.") + kind, "is missing", "declare the model's units when exporting");
  m->length_unit = units["length"].get<std::string>();
  m->time_unit = units["time"].get<std::string>();
  if (LENGTH_TO_NM.count(m->length_unit) == 0)
    bad("units.length",
        fmt::format("is '{}'; fix ep/propagate runs models in physical units", m->length_unit),
        "use nm, angstrom or bohr");
  if (TIME_TO_PS.count(m->time_unit) == 0)
    bad("units.time",
        fmt::format("is '{}'; fix ep/propagate runs models in physical units", m->time_unit),
        "use fs, ps or ns");

  // role fields: the flow, its prior and the jump

  if (!meta.contains("role_fields") || !meta["role_fields"].is_object())
    bad("role_fields", "is missing or not an object", "re-export the model with engine_plugins");
  const auto &rf = meta["role_fields"];

  if (want_role == "propagator") {
    if (!rf.contains("delta_tau") || !rf["delta_tau"].is_number() ||
        !(rf["delta_tau"].get<double>() > 0.0))
      bad("role_fields.delta_tau", "is missing or not a positive number",
          "export the propagator with its jump time delta_tau (model time units)");
    m->delta_tau = rf["delta_tau"].get<double>();
  }

  if (!rf.contains("temperature_range") || !rf["temperature_range"].is_array() ||
      rf["temperature_range"].size() < 2 || !rf["temperature_range"][0].is_number() ||
      !rf["temperature_range"][1].is_number())
    bad("role_fields.temperature_range", "is missing or not [low, high] (K)",
        "export the model with the temperature range it was trained on");
  m->t_lo = rf["temperature_range"][0].get<double>();
  m->t_hi = rf["temperature_range"][1].get<double>();

  if (!rf.contains("flow_steps") || !rf["flow_steps"].is_number_integer() ||
      rf["flow_steps"].get<int>() < 1)
    bad("role_fields.flow_steps", "is missing or not an integer >= 1",
        "export the model with its number of flow steps");
  m->flow_steps = m->steps = rf["flow_steps"].get<int>();

  if (!rf.contains("solver") || !rf["solver"].is_string())
    bad("role_fields.solver", "is missing or not a string", "export with solver 'euler' or 'heun'");
  m->solver = rf["solver"].get<std::string>();
  if (m->solver != "euler" && m->solver != "heun")
    bad("role_fields.solver", fmt::format("is '{}'", m->solver), "use 'euler' or 'heun'");
  m->heun = m->solver == "heun";

  if (!rf.contains("prior") || !rf["prior"].is_object())
    bad("role_fields.prior", "is missing or not an object",
        "export the model with prior {kind: maxwell_boltzmann, scale: {...}, mass: {...}}");
  const auto &prior = rf["prior"];
  const std::string kind = prior.contains("kind") && prior["kind"].is_string()
      ? prior["kind"].get<std::string>()
      : std::string("(missing)");
  if (kind != "maxwell_boltzmann")
    bad("role_fields.prior.kind", fmt::format("is '{}'", kind),
        "fix ep/propagate supports the prior kind 'maxwell_boltzmann'");
  for (const char *table : {"scale", "mass"}) {
    if (!prior.contains(table) || !prior[table].is_object())
      bad(std::string("role_fields.prior.") + table, "is missing or not a mapping type -> value",
          "give one value per type name");
    std::vector<double> &values = std::string(table) == "scale" ? m->scale : m->mass;
    for (const auto &name : m->type_names) {
      if (!prior[table].contains(name) || !prior[table][name].is_number())
        bad(std::string("role_fields.prior.") + table,
            fmt::format("has no number for type '{}'", name),
            fmt::format("give one value per type name ({})", join_names(m->type_names)));
      const double value = prior[table][name].get<double>();
      if (!std::isfinite(value) || value < 0.0 || (std::string(table) == "mass" && value == 0.0))
        bad(std::string("role_fields.prior.") + table,
            fmt::format("has {} for type '{}'", value, name),
            "use finite values, masses > 0 (amu), scales >= 0");
      values.push_back(value);
    }
  }

  if (rf.contains("max_displacement") && !rf["max_displacement"].is_null()) {
    if (!rf["max_displacement"].is_number() || !(rf["max_displacement"].get<double>() > 0.0))
      bad("role_fields.max_displacement", "is not a positive number (angstrom)",
          "export a positive bound, or none");
    m->max_disp_meta = rf["max_displacement"].get<double>();
  }
  if (rf.contains("max_attempts") && !rf["max_attempts"].is_null()) {
    if (!rf["max_attempts"].is_number_integer() || rf["max_attempts"].get<int>() < 1)
      bad("role_fields.max_attempts", "is not an integer >= 1", "export a positive number");
    m->max_attempts_meta = rf["max_attempts"].get<int>();
  }

  if (rf.contains("passes") && !rf["passes"].is_null()) {
    if (!rf["passes"].is_number_integer() || rf["passes"].get<int>() < 1 ||
        rf["passes"].get<int>() > MAX_PASSES)
      bad("role_fields.passes", fmt::format("is not an integer in 1..{}", MAX_PASSES),
          "re-export the model");
    if (want_role != "corrector" && rf["passes"].get<int>() != 1)
      bad("role_fields.passes", "is set, but only a corrector runs several passes",
          "re-export the model without passes");
    m->passes = rf["passes"].get<int>();
  }

  // the propagator's prior scales from the input ('prior_scale NAME S'), before the widths
  if (want_role == "propagator") {
    for (const auto &kv : prior_scale_override) {
      auto found = std::find(m->type_names.begin(), m->type_names.end(), kv.first);
      if (found == m->type_names.end())
        error->all(FLERR,
                   "fix ep/propagate prior_scale: '{}' is not a type of model '{}'. Fix: use one of "
                   "its type names: {}",
                   kv.first, path, join_names(m->type_names));
      m->scale[found - m->type_names.begin()] = kv.second;
    }
  }

  // engine side: units, type map, prior widths

  const auto &lammps_units = LAMMPS_UNITS.at(update->unit_style);
  m->length_factor = LENGTH_TO_NM.at(lammps_units.first) / LENGTH_TO_NM.at(m->length_unit);
  m->angstrom_factor = LENGTH_TO_NM.at("angstrom") / LENGTH_TO_NM.at(m->length_unit);
  m->cutoff = m->cutoff_model / m->length_factor;
  if (m->max_disp_meta > 0.0) m->max_disp = m->max_disp_meta * m->angstrom_factor;

  // contact redraw: role_fields.contact = {"min_distance": {"A-B": angstrom}, "rounds": N}
  const int nmt = static_cast<int>(m->type_names.size());
  m->contact_sq.assign(nmt * nmt, 0.0);
  if (want_role == "propagator" && rf.contains("contact") && !rf["contact"].is_null()) {
    const auto &contact = rf["contact"];
    if (!contact.is_object() || !contact.contains("min_distance") ||
        !contact["min_distance"].is_object())
      bad("role_fields.contact", "has no 'min_distance' mapping {\"A-B\": angstrom}",
          "re-export the model with engine_plugins (methods/propagator/contact.py)");
    for (const auto &item : contact["min_distance"].items()) {
      const std::string key = item.key();
      const auto dash = key.find('-');
      int a = -1, b = -1;
      if (dash != std::string::npos && key.find('-', dash + 1) == std::string::npos) {
        auto fa = std::find(m->type_names.begin(), m->type_names.end(), key.substr(0, dash));
        auto fb = std::find(m->type_names.begin(), m->type_names.end(), key.substr(dash + 1));
        if (fa != m->type_names.end() && fb != m->type_names.end()) {
          a = static_cast<int>(fa - m->type_names.begin());
          b = static_cast<int>(fb - m->type_names.begin());
        }
      }
      if (a < 0)
        bad("role_fields.contact.min_distance",
            fmt::format("has pair '{}', not TYPE-TYPE of the model's types", key),
            fmt::format("name pairs with the type names ({})", join_names(m->type_names)));
      if (!item.value().is_number() || !(item.value().get<double>() >= 0.0) ||
          !std::isfinite(item.value().get<double>()))
        bad("role_fields.contact.min_distance", fmt::format("['{}'] is not a distance >= 0", key),
            "re-export the model");
      const double d = item.value().get<double>() * m->angstrom_factor;
      m->contact_sq[a * nmt + b] = m->contact_sq[b * nmt + a] = d * d;
    }
    if (contact.contains("rounds")) {
      if (!contact["rounds"].is_number_integer() || contact["rounds"].get<int>() < 0)
        bad("role_fields.contact.rounds", "is not an integer >= 0", "re-export the model");
      m->contact_rounds = contact["rounds"].get<int>();
    }
  }

  const int ntypes = atom->ntypes;
  m->type_map.assign(ntypes + 1, -1);
  m->sigma.assign(ntypes + 1, 0.0);
  for (int t = 1; t <= ntypes; t++) {
    auto found = std::find(m->type_names.begin(), m->type_names.end(), type_args[t]);
    if (found == m->type_names.end())
      error->all(FLERR,
                 "fix ep/propagate types: LAMMPS type {} is mapped to '{}', which is not a type of "
                 "{} '{}'. Model type names: {}",
                 t, type_args[t], what, path, join_names(m->type_names));
    const int mt = static_cast<int>(found - m->type_names.begin());
    m->type_map[t] = mt;
    // sigma = scale * sqrt(k_B T / m) in angstrom (same operations as prior.py)
    const double kt = KB_EV_PER_K * temperature;
    m->sigma[t] = m->scale[mt] * std::sqrt(kt / m->mass[mt]) * m->angstrom_factor;
  }

  // the TorchScript module

  problem.clear();
  try {
    m->module = torch::jit::load(path, m->device);
    m->module.eval();
  } catch (const c10::Error &e) {
    problem = first_line(e.what_without_backtrace());
  } catch (const std::exception &e) {
    problem = first_line(e.what());
  }
  if (!problem.empty())
    error->all(FLERR,
               "fix ep/propagate: TorchScript could not load model '{}' ({}). Fix: re-export the "
               "model with the torch this plugin is built against ({}.{}.{})",
               path, problem, TORCH_VERSION_MAJOR, TORCH_VERSION_MINOR, TORCH_VERSION_PATCH);
  return m;
}

/* ---------------------------------------------------------------------- */

void FixEPPropagate::init()
{
  if (utils::strmatch(update->integrate_style, "^respa"))
    error->all(FLERR, "fix ep/propagate does not support run_style respa. Fix: use run_style verlet");

  // each step is one jump of delta_tau

  const auto &lammps_units = LAMMPS_UNITS.at(update->unit_style);
  const Model &p = *propagator;
  const double dtau =
      p.delta_tau * TIME_TO_PS.at(p.time_unit) / TIME_TO_PS.at(lammps_units.second);
  if (set_timestep && std::fabs(update->dt - dtau) > 1.0e-9 * dtau) {
    // as fix dt/reset does: keep the elapsed time, then change dt for everyone
    update->update_time();
    update->dt = dtau;
    update->dt_default = 0;
    if (force->pair) force->pair->reset_dt();
    for (auto &ifix : modify->get_fix_list()) ifix->reset_dt();
    if (comm->me == 0)
      utils::logmesg(lmp, "ep/propagate: timestep set to {:.15g} {} (delta_tau of model {})\n",
                     dtau, lammps_units.second, p.path);
  }
  if (std::fabs(update->dt - dtau) > 1.0e-9 * dtau)
    error->all(FLERR,
               "fix ep/propagate: timestep is {} {}, but model '{}' jumps delta_tau = {} {} = "
               "{:.15g} {} per step (each LAMMPS step is one learned jump). Fix: 'timestep "
               "{:.15g}' after 'units {}', or the fix keyword 'timestep set'",
               update->dt, lammps_units.second, p.path, p.delta_tau, p.time_unit, dtau,
               lammps_units.second, dtau, update->unit_style);

  // boundaries the models were declared for

  const int periodic[3] = {domain->xperiodic, domain->yperiodic, domain->zperiodic};
  std::string nonperiodic_dims, periodic_dims;
  for (int d = 0; d < domain->dimension; d++) {
    std::string &dims = periodic[d] ? periodic_dims : nonperiodic_dims;
    if (!dims.empty()) dims += ' ';
    dims += "xyz"[d];
  }
  double max_cutoff = 0.0, halo = 0.0;
  for (const Model *m : {propagator.get(), corrector.get()}) {
    if (!m) continue;
    if (m->periodicity == "periodic" && !nonperiodic_dims.empty())
      error->all(FLERR,
                 "fix ep/propagate: {} '{}' is declared for periodic systems, but the LAMMPS box "
                 "is non-periodic in {}. Fix: use 'boundary p p p', or a model exported with "
                 "periodicity 'nonperiodic' or 'any'",
                 m->role, m->path, nonperiodic_dims);
    if (m->periodicity == "nonperiodic" && !periodic_dims.empty())
      error->all(FLERR,
                 "fix ep/propagate: {} '{}' is declared for non-periodic systems, but the LAMMPS "
                 "box is periodic in {}. Fix: use non-periodic boundaries, or a model exported "
                 "with periodicity 'periodic' or 'any'",
                 m->role, m->path, periodic_dims);
    max_cutoff = std::max(max_cutoff, m->cutoff);
    halo = std::max(halo, m->layers * m->cutoff);

    // the centre of mass is kept with LAMMPS's masses; the model's prior uses its own
    if (comm->me == 0 && atom->mass && !atom->rmass_flag)
      for (int t = 1; t <= atom->ntypes; t++) {
        const double prior_mass = m->mass[m->type_map[t]];
        if (std::fabs(atom->mass[t] - prior_mass) > 1.0e-6 * prior_mass)
          error->warning(FLERR,
                         "fix ep/propagate: LAMMPS mass of type {} ({}) differs from the mass {} "
                         "amu of '{}' in the {}'s prior; the prior width uses the model's mass, "
                         "the centre-of-mass correction LAMMPS's",
                         t, atom->mass[t], prior_mass, type_args[t], m->role);
      }
  }

  // the graph comes from a full neighbor list with the pair style's cutoff (+ skin)

  if (force->pair == nullptr || force->pair->cutforce < max_cutoff)
    error->all(FLERR,
               "fix ep/propagate builds its graph from a neighbor list, which needs a pair style "
               "with a cutoff >= the model cutoff {} (LAMMPS length units); {}. Fix: add "
               "'pair_style zero {}' and 'pair_coeff * *' (no forces: the fix replaces time "
               "integration)",
               max_cutoff,
               force->pair ? fmt::format("the pair style's cutoff is {}", force->pair->cutforce)
                           : std::string("no pair style is defined"),
               max_cutoff);
  neighbor->add_request(this, NeighConst::REQ_FULL | NeighConst::REQ_GHOST);

  if (comm->mode != Comm::SINGLE)
    error->all(FLERR,
               "fix ep/propagate requires 'comm_modify mode single' (it sets the ghost cutoff "
               "from the models' message-passing depth)");
  halo += neighbor->skin;
  if (comm->cutghostuser < halo) {
    comm->cutghostuser = halo;
    if (comm->me == 0)
      utils::logmesg(lmp, "ep/propagate: ghost cutoff set to {} (layers x cutoff + skin {})\n",
                     halo, neighbor->skin);
  }
}

/* ---------------------------------------------------------------------- */

void FixEPPropagate::init_list(int /*id*/, NeighList *ptr)
{
  list = ptr;
}

/* ---------------------------------------------------------------------- */

void FixEPPropagate::grow_disp()
{
  if (atom->nmax > nmax_disp) {
    nmax_disp = atom->nmax;
    memory->destroy(disp);
    memory->destroy(disp_trial);
    memory->destroy(attempt_arr);
    memory->create(disp, nmax_disp, 3, "ep/propagate:disp");
    memory->create(disp_trial, nmax_disp, 3, "ep/propagate:disp_trial");
    // 3 per atom so that it travels through the same forward communication as disp
    memory->create(attempt_arr, nmax_disp, 3, "ep/propagate:attempt");
  }
}

/* ----------------------------------------------------------------------
   for each ghost atom: the owned atom of this rank it is a periodic image
   of, or -1 (owned by another rank); indices change only when LAMMPS
   rebuilds the neighbor lists, so cached per build
------------------------------------------------------------------------- */

void FixEPPropagate::find_ghost_owners()
{
  const int nlocal = atom->nlocal;
  const int nghost = atom->nghost;
  if (ghost_owner_build == neighbor->ncalls && (int) ghost_owner.size() == nghost) return;
  ghost_owner_build = neighbor->ncalls;
  ghost_owner.assign(nghost, -1);

  const tagint *tag = atom->tag;
  if (atom->map_style != Atom::MAP_NONE) {
    for (int g = 0; g < nghost; g++) {
      const int owner = atom->map(tag[nlocal + g]);
      if (owner >= 0 && owner < nlocal) ghost_owner[g] = owner;
    }
  } else {
    std::unordered_map<tagint, int> local_of_tag(2 * nlocal);
    for (int i = 0; i < nlocal; i++) local_of_tag[tag[i]] = i;
    for (int g = 0; g < nghost; g++) {
      auto found = local_of_tag.find(tag[nlocal + g]);
      if (found != local_of_tag.end()) ghost_owner[g] = found->second;
    }
  }
}

/* ----------------------------------------------------------------------
   graph of the atoms that influence the velocity of owned atoms:
   breadth-first over the neighbor list, in cutoff hops from owned atoms;
   nodes with hop <= L, edges [centre, neighbour] out of every node with
   hop <= L-1, plus the reverse of edges that end at a node with hop == L.
   A ghost that is a periodic image of an atom this rank owns is folded onto
   that atom's node with the edge shift x[ghost] - x[owner] (its flow state
   is the owner's plus that shift); other ghosts are explicit nodes with zero
   shifts. On 1 rank the graph is the periodic graph of a standalone call.
------------------------------------------------------------------------- */

void FixEPPropagate::build_graph(const Model &m)
{
  double **x = atom->x;
  const int nlocal = atom->nlocal;
  const int nall = nlocal + atom->nghost;
  const int *numneigh = list->numneigh;
  int **firstneigh = list->firstneigh;
  const double cutsq = m.cutoff * m.cutoff;
  const int nlayers = m.layers;

  find_ghost_owners();

  hop.assign(nall, -1);
  node_of.assign(nall, -1);
  atom_of.resize(nlocal);
  frontier.resize(nlocal);
  for (int i = 0; i < nlocal; i++) {
    hop[i] = 0;
    node_of[i] = i;
    atom_of[i] = i;
    frontier[i] = i;
  }
  edge_src.clear();
  edge_dst.clear();
  shift_buf.clear();

  for (int layer = 0; layer < nlayers; layer++) {
    const bool last = (layer == nlayers - 1);
    next_frontier.clear();
    for (const int i : frontier) {
      const int *jlist = firstneigh[i];
      const int jnum = numneigh[i];
      const int64_t inode = node_of[i];
      for (int jj = 0; jj < jnum; jj++) {
        const int j = jlist[jj] & NEIGHMASK;
        const double delx = x[j][0] - x[i][0];
        const double dely = x[j][1] - x[i][1];
        const double delz = x[j][2] - x[i][2];
        if (delx * delx + dely * dely + delz * delz >= cutsq) continue;

        int t = j;    // the atom whose node the edge ends at
        double sx = 0.0, sy = 0.0, sz = 0.0;
        if (j >= nlocal && ghost_owner[j - nlocal] >= 0) {
          t = ghost_owner[j - nlocal];
          sx = (x[j][0] - x[t][0]) * m.length_factor;
          sy = (x[j][1] - x[t][1]) * m.length_factor;
          sz = (x[j][2] - x[t][2]) * m.length_factor;
        }
        if (hop[t] < 0) {
          hop[t] = layer + 1;
          node_of[t] = static_cast<int>(atom_of.size());
          atom_of.push_back(t);
          next_frontier.push_back(t);
        }
        edge_src.push_back(inode);
        edge_dst.push_back(node_of[t]);
        shift_buf.push_back(sx);
        shift_buf.push_back(sy);
        shift_buf.push_back(sz);
        if (last && hop[t] == nlayers) {    // never a folded atom: those have hop 0
          edge_src.push_back(node_of[t]);
          edge_dst.push_back(inode);
          shift_buf.push_back(0.0);
          shift_buf.push_back(0.0);
          shift_buf.push_back(0.0);
        }
      }
    }
    frontier.swap(next_frontier);
  }
}

/* ----------------------------------------------------------------------
   one flow of model m from the current positions: on return disp[i] holds
   the displacement of every owned atom of the group (model length units),
   minus its mass-weighted mean; max_norm is the largest |d| (global).
   A draw is accepted when every |d| (after the mean is removed) is finite
   and <= max_disp, as engine_plugins/methods/propagator/sampler.py does.
   Returns the number of redraws.
------------------------------------------------------------------------- */

int FixEPPropagate::flow(Model &m, uint64_t attempt_offset, double &max_norm)
{
  double **x = atom->x;
  const int *type = atom->type;
  const int *mask = atom->mask;
  const tagint *tag = atom->tag;
  const int nlocal = atom->nlocal;
  const int nall = nlocal + atom->nghost;

  // a jump needs no gradient, so none is recorded through the model's parameters (the same
  // switch made OpenMM's jump 1.5x faster; here, CG water on a CPU, no measurable change)
  torch::NoGradGuard no_grad;

  grow_disp();
  build_graph(m);
  const int64_t nnodes = static_cast<int64_t>(atom_of.size());
  const int64_t nedges = static_cast<int64_t>(edge_src.size());

  // constant inputs of this flow

  m.xc_buf.resize(3 * nnodes);
  m.xt_buf.resize(3 * nnodes);
  m.type_buf.resize(nnodes);
  for (int64_t n = 0; n < nnodes; n++) {
    const int a = atom_of[n];
    for (int k = 0; k < 3; k++) m.xc_buf[3 * n + k] = x[a][k] * m.length_factor;
    m.type_buf[n] = m.type_map[type[a]];
  }
  m.edge_buf.resize(2 * nedges);
  std::copy(edge_src.begin(), edge_src.end(), m.edge_buf.begin());
  std::copy(edge_dst.begin(), edge_dst.end(), m.edge_buf.begin() + nedges);

  std::string problem;
  try {
    const auto as_double = torch::TensorOptions().dtype(torch::kFloat64);
    const auto as_long = torch::TensorOptions().dtype(torch::kInt64);
    const auto on_device = torch::TensorOptions().dtype(m.dtype).device(m.device);
    m.x_cond = torch::from_blob(m.xc_buf.data(), {nnodes, 3}, as_double)
                   .to(m.device, m.dtype, false, true);
    m.types = torch::from_blob(m.type_buf.data(), {nnodes}, as_long)
                  .to(m.device, torch::kInt64, false, true);
    m.edge_index = torch::from_blob(m.edge_buf.data(), {2, nedges}, as_long)
                       .to(m.device, torch::kInt64, false, true);
    m.edge_shift = torch::from_blob(shift_buf.data(), {nedges, 3}, as_double)
                       .to(m.device, m.dtype, false, true);
    m.temperature = torch::full({nnodes}, temperature, on_device);
  } catch (const c10::Error &e) {
    problem = first_line(e.what_without_backtrace());
  }
  if (!problem.empty())
    error->one(FLERR, "fix ep/propagate: preparing the inputs of '{}' failed at step {}: {}",
               m.path, update->ntimestep, problem);

  // v(x_t, t) for the owned atoms, from the displacement d of all atoms

  auto velocity = [&](double **d, double t) {
    for (int64_t n = 0; n < nnodes; n++) {
      const int a = atom_of[n];
      for (int k = 0; k < 3; k++) m.xt_buf[3 * n + k] = m.xc_buf[3 * n + k] + d[a][k];
    }
    std::string why;
    try {
      const auto as_double = torch::TensorOptions().dtype(torch::kFloat64);
      torch::Tensor x_t = torch::from_blob(m.xt_buf.data(), {nnodes, 3}, as_double)
                              .to(m.device, m.dtype, false, true);
      torch::Tensor tt = torch::full({}, t, torch::TensorOptions().dtype(m.dtype).device(m.device));
      m.inputs.clear();
      m.inputs.emplace_back(x_t);
      m.inputs.emplace_back(m.x_cond);
      m.inputs.emplace_back(m.types);
      m.inputs.emplace_back(m.edge_index);
      m.inputs.emplace_back(m.edge_shift);
      m.inputs.emplace_back(tt);
      m.inputs.emplace_back(m.temperature);
      m.inputs.emplace_back(static_cast<int64_t>(nlocal));
      auto out = m.module.forward(m.inputs);
      m.inputs.clear();
      if (!out.isTensor()) {
        why = "forward did not return a velocity tensor";
      } else {
        torch::Tensor v = out.toTensor().detach().to(torch::kCPU, torch::kFloat64).contiguous();
        if (v.dim() != 2 || v.size(0) != nnodes || v.size(1) != 3) {
          why = fmt::format("the velocity has shape {}, expected ({}, 3)",
                            std::string(c10::str(v.sizes())), nnodes);
        } else {
          m.vel_buf.assign(v.data_ptr<double>(), v.data_ptr<double>() + 3 * nlocal);
        }
      }
    } catch (const c10::Error &e) {
      why = first_line(e.what_without_backtrace());
    } catch (const std::exception &e) {
      why = first_line(e.what());
    }
    if (!why.empty())
      error->one(FLERR, "fix ep/propagate: {} '{}' failed at step {} (flow time {}): {}", m.role,
                 m.path, update->ntimestep, t, why);
  };

  auto exchange_ghosts = [&](double **d) {
    comm_array = d;
    comm->forward_comm(this);
    comm_array = nullptr;
  };

  const double *rmass = atom->rmass;
  const double *mass = atom->mass;
  const int K = m.steps;
  const double h = 1.0 / K;
  // per-atom draw counters (attempt_arr[a][0]): a failed draw redraws every atom, a contact
  // round only the atoms in a contact; ghosts get their owner's counter by forward comm
  for (int a = 0; a < nall; a++) attempt_arr[a][0] = attempt_arr[a][1] = attempt_arr[a][2] = 0.0;
  int attempt = 0;    // failed draws
  int rounds = 0;     // contact rounds
  for (;;) {
    double z[3];
    for (int a = 0; a < nall; a++) {
      if (mask[a] & groupbit) {
        const uint64_t key =
            EPNoise::key(seed, static_cast<uint64_t>(update->ntimestep),
                         static_cast<uint64_t>(attempt_arr[a][0]) + attempt_offset);
        EPNoise::normal3(key, static_cast<uint64_t>(tag[a]), z);
        const double s = m.sigma[type[a]];
        for (int k = 0; k < 3; k++) disp[a][k] = s * z[k];
      } else {
        disp[a][0] = disp[a][1] = disp[a][2] = 0.0;
      }
    }

    for (int step = 0; step < K; step++) {
      const double t = step * h;
      velocity(disp, t);
      if (!m.heun) {
        for (int i = 0; i < nlocal; i++)
          if (mask[i] & groupbit)
            for (int k = 0; k < 3; k++) disp[i][k] += h * m.vel_buf[3 * i + k];
      } else {
        const std::vector<double> v1 = m.vel_buf;
        for (int i = 0; i < nall; i++)
          for (int k = 0; k < 3; k++) disp_trial[i][k] = disp[i][k];
        for (int i = 0; i < nlocal; i++)
          if (mask[i] & groupbit)
            for (int k = 0; k < 3; k++) disp_trial[i][k] = disp[i][k] + h * v1[3 * i + k];
        exchange_ghosts(disp_trial);
        velocity(disp_trial, t + h);
        for (int i = 0; i < nlocal; i++)
          if (mask[i] & groupbit)
            for (int k = 0; k < 3; k++)
              disp[i][k] += 0.5 * h * (v1[3 * i + k] + m.vel_buf[3 * i + k]);
      }
      if (step < K - 1) exchange_ghosts(disp);
    }

    // no centre-of-mass drift: remove the mass-weighted mean over the group (LAMMPS masses)

    double local_sum[4] = {0.0, 0.0, 0.0, 0.0}, sum[4];
    for (int i = 0; i < nlocal; i++) {
      if (!(mask[i] & groupbit)) continue;
      const double mi = rmass ? rmass[i] : mass[type[i]];
      for (int k = 0; k < 3; k++) local_sum[k] += mi * disp[i][k];
      local_sum[3] += mi;
    }
    MPI_Allreduce(local_sum, sum, 4, MPI_DOUBLE, MPI_SUM, world);
    if (sum[3] > 0.0)
      for (int i = 0; i < nlocal; i++)
        if (mask[i] & groupbit)
          for (int k = 0; k < 3; k++) disp[i][k] -= sum[k] / sum[3];

    // accept or redraw (decided globally)

    double local[2] = {0.0, 0.0};    // number of bad atoms, largest |d|
    for (int i = 0; i < nlocal; i++) {
      if (!(mask[i] & groupbit)) continue;
      const double norm =
          std::sqrt(disp[i][0] * disp[i][0] + disp[i][1] * disp[i][1] + disp[i][2] * disp[i][2]);
      if (!std::isfinite(norm) || (m.max_disp > 0.0 && norm > m.max_disp)) local[0] += 1.0;
      local[1] = std::max(local[1], std::isfinite(norm) ? norm : HUGE_VAL);
    }
    double global[2];
    MPI_Allreduce(&local[0], &global[0], 1, MPI_DOUBLE, MPI_SUM, world);
    MPI_Allreduce(&local[1], &global[1], 1, MPI_DOUBLE, MPI_MAX, world);
    max_norm = global[1];
    if (global[0] == 0.0) {
      if (m.contact_rounds <= 0) break;
      // contact redraw: owned atoms closer to a graph neighbour than min_distance of their
      // type pair at x_cond + d (edges out of owned atoms; the full list has both directions)
      exchange_ghosts(disp);
      const int nt = static_cast<int>(m.type_names.size());
      double flagged_local = 0.0, flagged = 0.0;
      for (int i = 0; i < nlocal; i++) attempt_arr[i][1] = 0.0;
      for (int64_t e = 0; e < nedges; e++) {
        const int64_t src = edge_src[e], dst = edge_dst[e];
        if (src >= nlocal) continue;
        const int ai = atom_of[src], aj = atom_of[dst];
        if (!(mask[ai] & groupbit)) continue;
        const double bound_sq = m.contact_sq[m.type_buf[src] * nt + m.type_buf[dst]];
        if (bound_sq <= 0.0) continue;
        double r2 = 0.0;
        for (int k = 0; k < 3; k++) {
          const double dk = (m.xc_buf[3 * dst + k] + disp[aj][k]) -
              (m.xc_buf[3 * src + k] + disp[ai][k]) + shift_buf[3 * e + k];
          r2 += dk * dk;
        }
        if (r2 < bound_sq) attempt_arr[ai][1] = 1.0;
      }
      for (int i = 0; i < nlocal; i++) flagged_local += attempt_arr[i][1];
      MPI_Allreduce(&flagged_local, &flagged, 1, MPI_DOUBLE, MPI_SUM, world);
      if (flagged == 0.0) break;
      if (rounds >= m.contact_rounds) {
        contact_left += 1.0;
        break;
      }
      rounds++;
      total_contact_rounds += 1.0;
      contact_atoms += flagged;
      for (int i = 0; i < nlocal; i++) attempt_arr[i][0] += attempt_arr[i][1];
      exchange_ghosts(attempt_arr);
      continue;
    }
    attempt++;
    for (int a = 0; a < nall; a++) attempt_arr[a][0] += 1.0;
    if (attempt >= max_attempts)
      error->all(FLERR,
                 "fix ep/propagate: jump at step {}: all {} attempt(s) of the {} '{}' gave a "
                 "non-finite displacement or one longer than max_displacement {} {} (last attempt: "
                 "{} atom(s), largest |d| {} {}). Fix: check the model (NaN or exploding "
                 "velocities), keep temp inside its trained range, or raise max_disp / "
                 "max_attempts",
                 update->ntimestep, max_attempts, m.role, m.path,
                 m.max_disp > 0.0 ? fmt::format("{}", m.max_disp) : std::string("(none)"),
                 m.length_unit, global[0], global[1], m.length_unit);
  }
  return attempt;
}

/* ----------------------------------------------------------------------
   x += d (LAMMPS units), wrapped back into the box (any number of periods,
   image flags updated); velocities v = d/dt (set) or v += d/dt
------------------------------------------------------------------------- */

void FixEPPropagate::apply_displacement(double length_factor, bool set_velocity)
{
  double **x = atom->x;
  double **v = atom->v;
  imageint *image = atom->image;
  const int *mask = atom->mask;
  const int nlocal = atom->nlocal;
  const double dt = update->dt;
  for (int i = 0; i < nlocal; i++) {
    if (!(mask[i] & groupbit)) continue;
    for (int k = 0; k < 3; k++) {
      const double d = disp[i][k] / length_factor;
      x[i][k] += d;
      if (set_velocity)
        v[i][k] = d / dt;
      else
        v[i][k] += d / dt;
    }
    domain->remap(x[i], image[i]);
  }
}

/* ----------------------------------------------------------------------
   LAMMPS moves atoms between neighboring sub-domains only (comm->exchange):
   stop with a clear error before a jump longer than a sub-domain would lose atoms
------------------------------------------------------------------------- */

void FixEPPropagate::check_migration(double max_norm_lammps)
{
  if (comm->nprocs == 1) return;
  // rows of h_inv: d(lamda)/dx for each dimension (Voigt order xx yy zz yz xz xy)
  const double *hi = domain->h_inv;
  const double rows[3] = {std::sqrt(hi[0] * hi[0] + hi[5] * hi[5] + hi[4] * hi[4]),
                          std::sqrt(hi[1] * hi[1] + hi[3] * hi[3]), std::fabs(hi[2])};
  double local[3], width[3];
  for (int d = 0; d < 3; d++) {
    local[d] = domain->triclinic ? domain->subhi_lamda[d] - domain->sublo_lamda[d]
                                 : (domain->subhi[d] - domain->sublo[d]) / domain->prd[d];
  }
  MPI_Allreduce(local, width, 3, MPI_DOUBLE, MPI_MIN, world);
  for (int d = 0; d < domain->dimension; d++) {
    const bool several = comm->style != Comm::BRICK || comm->procgrid[d] > 2;
    if (!several) continue;
    const double rows_d = domain->triclinic ? rows[d] : 1.0 / domain->prd[d];
    if (max_norm_lammps * rows_d >= width[d])
      error->all(FLERR,
                 "fix ep/propagate: a jump at step {} moved an atom by {} (LAMMPS length units), "
                 "more than the width of an MPI sub-domain in {} ({}); LAMMPS would lose it "
                 "when migrating atoms. Fix: use fewer MPI ranks along {} (processors command), "
                 "or lower max_disp",
                 update->ntimestep, max_norm_lammps, "xyz"[d], width[d] / rows_d, "xyz"[d]);
  }
}

/* ----------------------------------------------------------------------
   rebuild ghosts and neighbor lists on the current positions (as Verlet does
   on a reneighboring step), so that the corrector's graph is built on the
   propagated positions
------------------------------------------------------------------------- */

void FixEPPropagate::reneighbor()
{
  if (domain->triclinic) domain->x2lamda(atom->nlocal);
  domain->pbc();
  comm->exchange();
  comm->borders();
  if (domain->triclinic) domain->lamda2x(atom->nlocal + atom->nghost);
  if (modify->n_pre_neighbor) modify->pre_neighbor();
  neighbor->build(1);
  if (modify->n_post_neighbor) modify->post_neighbor();
}

/* ----------------------------------------------------------------------
   one learned jump: propagator, then (optionally) corrector
------------------------------------------------------------------------- */

void FixEPPropagate::initial_integrate(int /*vflag*/)
{
  double **x = atom->x;
  for (int i = 0; i < atom->nlocal; i++)
    if (!std::isfinite(x[i][0]) || !std::isfinite(x[i][1]) || !std::isfinite(x[i][2]))
      error->one(FLERR,
                 "fix ep/propagate: atom {} (type {}) has a non-finite position ({}, {}, {}) at the "
                 "start of the jump of step {}. Fix: check the input structure and what else "
                 "moves atoms",
                 atom->tag[i], atom->type[i], x[i][0], x[i][1], x[i][2], update->ntimestep);

  double max_norm = 0.0;
  const int redraws = flow(*propagator, 0, max_norm);
  apply_displacement(propagator->length_factor, true);
  check_migration(max_norm / propagator->length_factor);
  int corrector_redraws = 0;

  if (corrector) {
    // each pass: the same loop on the corrected positions, its own noise stream
    for (int p = 0; p < corrector->passes; p++) {
      reneighbor();
      corrector_redraws +=
          flow(*corrector, CORRECTOR_ATTEMPT_OFFSET + static_cast<uint64_t>(p) * PASS_ATTEMPT_STRIDE,
               max_norm);
      apply_displacement(corrector->length_factor, false);
      check_migration(max_norm / corrector->length_factor);
    }
  }

  // LAMMPS reneighbors on this step (migration, ghosts, neighbor list on the new positions)

  next_reneighbor = update->ntimestep;

  // diagnostics: |total displacement| = |v| dt

  double **v = atom->v;
  const int *mask = atom->mask;
  double local_max = 0.0;
  for (int i = 0; i < atom->nlocal; i++)
    if (mask[i] & groupbit)
      local_max = std::max(local_max, std::sqrt(v[i][0] * v[i][0] + v[i][1] * v[i][1] +
                                                v[i][2] * v[i][2]));
  MPI_Allreduce(&local_max, &last_max_disp, 1, MPI_DOUBLE, MPI_MAX, world);
  last_max_disp *= update->dt;
  last_redraws = redraws + corrector_redraws;
  total_redraws += last_redraws;
  total_corrector_redraws += corrector_redraws;
  num_jumps += 1.0;
}

/* ---------------------------------------------------------------------- */

int FixEPPropagate::pack_forward_comm(int n, int *list_, double *buf, int /*pbc_flag*/,
                                      int * /*pbc*/)
{
  // displacements are translation invariant: no periodic shift
  int m = 0;
  for (int i = 0; i < n; i++) {
    const int j = list_[i];
    buf[m++] = comm_array[j][0];
    buf[m++] = comm_array[j][1];
    buf[m++] = comm_array[j][2];
  }
  return m;
}

/* ---------------------------------------------------------------------- */

void FixEPPropagate::unpack_forward_comm(int n, int first, double *buf)
{
  int m = 0;
  const int last = first + n;
  for (int i = first; i < last; i++) {
    comm_array[i][0] = buf[m++];
    comm_array[i][1] = buf[m++];
    comm_array[i][2] = buf[m++];
  }
}

/* ----------------------------------------------------------------------
   f_ID: redraws since the fix was defined
------------------------------------------------------------------------- */

double FixEPPropagate::compute_scalar()
{
  return total_redraws;
}

/* ----------------------------------------------------------------------
   f_ID[1] redraws since the fix was defined (propagator + corrector)
   f_ID[2] redraws in the last jump
   f_ID[3] largest |displacement| of an atom in the last jump (LAMMPS length)
   f_ID[4] jumps done
   f_ID[5] corrector redraws since the fix was defined
   f_ID[6] contact rounds since the fix was defined (each redraws the atoms in a contact)
   f_ID[7] jumps accepted with a contact left after contact_rounds rounds
------------------------------------------------------------------------- */

double FixEPPropagate::compute_vector(int n)
{
  switch (n) {
    case 0:
      return total_redraws;
    case 1:
      return last_redraws;
    case 2:
      return last_max_disp;
    case 3:
      return num_jumps;
    case 4:
      return total_corrector_redraws;
    case 5:
      return total_contact_rounds;
    case 6:
      return contact_left;
    default:
      return 0.0;
  }
}

/* ---------------------------------------------------------------------- */

double FixEPPropagate::memory_usage()
{
  return 3.0 * 3 * nmax_disp * sizeof(double);
}
