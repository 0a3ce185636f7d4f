/* ----------------------------------------------------------------------
   engine_plugins: LAMMPS pair style ep/torch for role 'pseudo_force' artifacts.

   The model is a TorchScript module with the signature of
   engine_plugins/export/roles.py:

     forward(pos[N,3], types[N], edge_index[2,E], edge_shift[E,3], n_local)
       -> (atom_energy[N], forces[N,3])

   Graph: owned atoms are nodes 0..nlocal-1 (LAMMPS local index = node index);
   ghost atoms are explicit nodes after them, edge shifts are zero. Only the
   ghosts and edges that can influence the energy of owned atoms are passed:
   with L message-passing layers, a node at graph distance d (in cutoff hops)
   from an owned atom matters if d <= L, an edge if one end has d <= L-1.
   The halo (comm->cutghostuser) is raised to L * cutoff + skin, so results do
   not depend on the number of MPI ranks.

   On steps that need no virial, ghosts that are periodic images of atoms this
   rank owns are folded onto their owner with an edge shift (on 1 rank: all of
   them, so the graph is the periodic graph of a standalone call). Energies and
   forces are the same either way; the virial needs the explicit ghosts
   (sum of r.f over local and ghost atoms), so those steps use them.
------------------------------------------------------------------------- */

#include "pair_ep_torch.h"

#include "atom.h"
#include "comm.h"
#include "domain.h"
#include "error.h"
#include "force.h"
#include "json.h"
#include "memory.h"
#include "neigh_list.h"
#include "neighbor.h"
#include "update.h"
#include "utils.h"

#include <ATen/Parallel.h>
#include <caffe2/serialize/inline_container.h>
#include <torch/cuda.h>
#include <torch/script.h>
#include <torch/version.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <map>
#include <unordered_map>

using namespace LAMMPS_NS;

namespace {

constexpr const char *METADATA_FILE = "engine_plugins_metadata.json";
constexpr const char *FORMAT_NAME = "engine_plugins.artifact";
constexpr int SCHEMA_VERSION = 1;
constexpr const char *REDUCED = "lj";

// Factors to the base units (nm, kJ/mol). Same table as engine_plugins/units.py;
// tests/test_lammps_pair.py checks that both give the same factors.
const std::map<std::string, double> LENGTH_TO_NM = {
    {"nm", 1.0},
    {"angstrom", 0.1},
    {"bohr", 0.052917721090380},
};
const std::map<std::string, double> ENERGY_TO_KJ_PER_MOL = {
    {"kJ/mol", 1.0},
    {"kcal/mol", 4.184},
    {"eV", 96.48533212331002},
    {"hartree", 2625.4996394798254},
};

// length and energy units of the LAMMPS unit styles this pair style accepts
const std::map<std::string, std::pair<std::string, std::string>> LAMMPS_UNITS = {
    {"metal", {"angstrom", "eV"}},
    {"real", {"angstrom", "kcal/mol"}},
    {"lj", {REDUCED, REDUCED}},
};

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

/* ---------------------------------------------------------------------- */

struct PairEPTorch::TorchState {
  torch::jit::Module module;
  torch::Device device{torch::kCPU};
  torch::ScalarType dtype{torch::kFloat64};
  std::vector<torch::jit::IValue> inputs;
};

/* ---------------------------------------------------------------------- */

PairEPTorch::PairEPTorch(LAMMPS *lmp) :
    Pair(lmp), torch_state(new TorchState), model_cutoff(0.0), num_layers(1), cutoff(0.0),
    length_factor(1.0), energy_factor(1.0), force_factor(1.0), device_request("auto"),
    num_threads(1), ghost_owner_build(-1), last_nodes(0.0), last_edges(0.0), last_folded(0.0),
    num_folded_evals(0.0), num_explicit_evals(0.0)
{
  single_enable = 0;
  restartinfo = 0;
  one_coeff = 1;
  manybody_flag = 1;
  ghostneigh = 1;
  centroidstressflag = CENTROID_NOTAVAIL;
}

/* ---------------------------------------------------------------------- */

PairEPTorch::~PairEPTorch()
{
  if (copymode) return;

  if (allocated) {
    memory->destroy(setflag);
    memory->destroy(cutsq);
    memory->destroy(cutghost);
  }
}

/* ---------------------------------------------------------------------- */

void PairEPTorch::allocate()
{
  allocated = 1;
  const int n = atom->ntypes + 1;

  memory->create(setflag, n, n, "pair:setflag");
  for (int i = 1; i < n; i++)
    for (int j = i; j < n; j++) setflag[i][j] = 0;

  memory->create(cutsq, n, n, "pair:cutsq");
  memory->create(cutghost, n, n, "pair:cutghost");
  type_map.assign(n, -1);
}

/* ----------------------------------------------------------------------
   pair_style ep/torch MODEL.pt [device cpu|cuda|auto] [threads N]
------------------------------------------------------------------------- */

void PairEPTorch::settings(int narg, char **arg)
{
  if (narg < 1)
    error->all(FLERR,
               "Illegal pair_style ep/torch command: expected 'pair_style ep/torch MODEL.pt "
               "[device cpu|cuda|auto] [threads N]'");

  device_request = "auto";
  num_threads = 1;

  int iarg = 1;
  while (iarg < narg) {
    const std::string keyword = arg[iarg];
    if (keyword == "device") {
      if (iarg + 2 > narg) utils::missing_cmd_args(FLERR, "pair_style ep/torch device", error);
      device_request = arg[iarg + 1];
      if (device_request != "cpu" && device_request != "cuda" && device_request != "auto")
        error->all(FLERR,
                   "Illegal pair_style ep/torch device '{}': use 'device cpu', 'device cuda' or "
                   "'device auto' (CUDA when libtorch sees a GPU)",
                   device_request);
      iarg += 2;
    } else if (keyword == "threads") {
      if (iarg + 2 > narg) utils::missing_cmd_args(FLERR, "pair_style ep/torch threads", error);
      num_threads = utils::inumeric(FLERR, arg[iarg + 1], false, lmp);
      if (num_threads < 1)
        error->all(FLERR, "Illegal pair_style ep/torch threads {}: use a number >= 1",
                   num_threads);
      iarg += 2;
    } else {
      error->all(FLERR,
                 "Unknown pair_style ep/torch keyword '{}': the keywords are 'device "
                 "cpu|cuda|auto' and 'threads N'",
                 keyword);
    }
  }

  // device: with several ranks per node, ranks share the node's GPUs round-robin

  const bool have_cuda = torch::cuda::is_available();
  if (device_request == "cuda" && !have_cuda)
    error->all(FLERR,
               "pair_style ep/torch device cuda: libtorch sees no CUDA device "
               "(torch::cuda::is_available() is false). Fix: use 'device cpu' or 'device auto'");
  if (device_request == "cuda" || (device_request == "auto" && have_cuda)) {
    MPI_Comm shared;
    int local_rank = 0;
    MPI_Comm_split_type(world, MPI_COMM_TYPE_SHARED, 0, MPI_INFO_NULL, &shared);
    MPI_Comm_rank(shared, &local_rank);
    MPI_Comm_free(&shared);
    const int ndevices = static_cast<int>(torch::cuda::device_count());
    torch_state->device = torch::Device(torch::kCUDA, local_rank % ndevices);
  } else {
    torch_state->device = torch::Device(torch::kCPU);
  }

  // intra-op threads are a process-wide libtorch setting; 1 is fastest for
  // small systems with one MPI rank per core

  at::set_num_threads(num_threads);

  load_model(arg[0]);
  set_unit_factors();

  // a new model invalidates an earlier type mapping

  if (allocated) {
    const int n = atom->ntypes + 1;
    for (int i = 1; i < n; i++)
      for (int j = i; j < n; j++) setflag[i][j] = 0;
    type_map.assign(n, -1);
  }

  if (comm->me == 0) {
    utils::logmesg(lmp,
                   "ep/torch: model {} (method {}, role pseudo_force): types {}; cutoff {} {} "
                   "({} in LAMMPS length units); {} message-passing layer(s); dtype {}; "
                   "periodicity {}; device {}; {} torch thread(s) per rank\n",
                   model_path, model_method, join_names(type_names), model_cutoff,
                   model_length_unit, cutoff, num_layers, model_dtype, model_periodicity,
                   torch_state->device.str(), num_threads);
    utils::logmesg(lmp,
                   "ep/torch: units: model length {} energy {} -> LAMMPS units {}: "
                   "length_factor {:.17g} energy_factor {:.17g}\n",
                   model_length_unit, model_energy_unit, update->unit_style, length_factor,
                   energy_factor);
  }
}

/* ----------------------------------------------------------------------
   read and check the artifact metadata, then load the TorchScript module
------------------------------------------------------------------------- */

void PairEPTorch::load_model(const std::string &path)
{
  if (!platform::file_is_readable(path))
    error->all(FLERR,
               "pair_style ep/torch: cannot read model file '{}' (missing or not readable). "
               "Fix: check the path; models are written by "
               "engine_plugins.export.export_artifact",
               path);

  // 1. the metadata, read from the zip archive without loading the TorchScript code

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
               "pair_style ep/torch: '{}' is not a TorchScript model file (corrupt or truncated: "
               "{}). Fix: re-export the model with engine_plugins.export.export_artifact",
               path, problem);
  if (!has_metadata)
    error->all(FLERR,
               "pair_style ep/torch: '{}' is a TorchScript file without {}, so not an artifact "
               "of engine_plugins. Fix: export the model with "
               "engine_plugins.export.export_artifact (or 'engine-plugins export')",
               path, METADATA_FILE);

  json meta;
  try {
    meta = json::parse(text);
  } catch (const std::exception &e) {
    error->all(FLERR,
               "pair_style ep/torch: '{}': artifact metadata is not valid JSON ({}). Fix: "
               "re-export the model",
               path, first_line(e.what()));
  }
  if (!meta.is_object())
    error->all(FLERR,
               "pair_style ep/torch: '{}': artifact metadata is not a JSON object. Fix: "
               "re-export the model",
               path);

  auto bad = [&](const std::string &field, const std::string &what, const std::string &fix) {
    error->all(FLERR, "pair_style ep/torch: '{}': artifact metadata field '{}' {}. Fix: {}", path,
               field, what, fix);
  };
  auto get_string = [&](const char *field, const char *fallback) -> std::string {
    if (!meta.contains(field)) {
      if (fallback) return fallback;
      bad(field, "is missing", "re-export the model with engine_plugins");
    }
    if (!meta[field].is_string()) bad(field, "is not a string", "re-export the model");
    return meta[field].get<std::string>();
  };

  const std::string format = meta.contains("format") && meta["format"].is_string()
      ? meta["format"].get<std::string>()
      : std::string("(missing)");
  if (format != FORMAT_NAME)
    bad("format", fmt::format("is '{}', not '{}', so this is not an engine_plugins artifact", format,
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

  const std::string role = get_string("role", nullptr);
  if (role != "pseudo_force") {
    auto found = ROLE_STYLE.find(role);
    if (found == ROLE_STYLE.end())
      bad("role", fmt::format("is '{}', which is not a role of schema version {}", role, SCHEMA_VERSION),
          "re-export the model with engine_plugins");
    else if (found->second.empty())
      error->all(FLERR,
                 "pair_style ep/torch: model '{}' has role '{}'; pair_style ep/torch runs only "
                 "role 'pseudo_force' models, and no LAMMPS style of engine_plugins runs role "
                 "'{}' yet. Fix: use a pseudo_force model here",
                 path, role, role);
    else
      error->all(FLERR,
                 "pair_style ep/torch: model '{}' has role '{}', which LAMMPS runs with '{}'; "
                 "pair_style ep/torch runs only role 'pseudo_force' models",
                 path, role, found->second);
  }

  model_method = get_string("method", "unknown");

  if (!meta.contains("type_names") || !meta["type_names"].is_array() || meta["type_names"].empty())
    bad("type_names", "is missing or not a non-empty list", "re-export the model");
  type_names.clear();
  for (const auto &name : meta["type_names"]) {
    if (!name.is_string() || name.get<std::string>().empty())
      bad("type_names", "contains an entry that is not a non-empty string", "re-export the model");
    type_names.push_back(name.get<std::string>());
  }

  if (!meta.contains("cutoff") || !meta["cutoff"].is_number() || !(meta["cutoff"].get<double>() > 0.0))
    bad("cutoff", "is missing or not a positive number", "re-export the model");
  model_cutoff = meta["cutoff"].get<double>();

  if (!meta.contains("num_message_passing_layers") ||
      !meta["num_message_passing_layers"].is_number_integer() ||
      meta["num_message_passing_layers"].get<int>() < 0)
    bad("num_message_passing_layers", "is missing or not an integer >= 0", "re-export the model");
  num_layers = meta["num_message_passing_layers"].get<int>();

  model_dtype = get_string("dtype", "float64");
  if (model_dtype == "float64")
    torch_state->dtype = torch::kFloat64;
  else if (model_dtype == "float32")
    torch_state->dtype = torch::kFloat32;
  else
    bad("dtype", fmt::format("is '{}'", model_dtype), "export the model as float32 or float64");

  model_periodicity = get_string("periodicity", "any");
  if (model_periodicity != "periodic" && model_periodicity != "nonperiodic" &&
      model_periodicity != "any")
    bad("periodicity", fmt::format("is '{}'", model_periodicity),
        "use 'periodic', 'nonperiodic' or 'any'");

  if (!meta.contains("units") || !meta["units"].is_object())
    bad("units", "is missing or not an object", "re-export the model with its units");
  const auto &units = meta["units"];
  for (const char *kind : {"length", "energy"})
    if (!units.contains(kind) || !units[kind].is_string())
      bad(std::string("units.") + kind, "is missing", "declare the model's units when exporting");
  model_length_unit = units["length"].get<std::string>();
  model_energy_unit = units["energy"].get<std::string>();
  if (model_length_unit != REDUCED && LENGTH_TO_NM.count(model_length_unit) == 0)
    bad("units.length", fmt::format("is '{}', not a unit this plugin knows", model_length_unit),
        "use nm, angstrom, bohr or lj");
  if (model_energy_unit != REDUCED && ENERGY_TO_KJ_PER_MOL.count(model_energy_unit) == 0)
    bad("units.energy", fmt::format("is '{}', not a unit this plugin knows", model_energy_unit),
        "use kJ/mol, kcal/mol, eV, hartree or lj");
  if ((model_length_unit == REDUCED) != (model_energy_unit == REDUCED))
    bad("units", "mixes reduced (lj) and physical units", "declare all units 'lj' or none");

  // 2. the TorchScript module

  problem.clear();
  try {
    torch_state->module = torch::jit::load(path, torch_state->device);
    torch_state->module.eval();
  } catch (const c10::Error &e) {
    problem = first_line(e.what_without_backtrace());
  } catch (const std::exception &e) {
    problem = first_line(e.what());
  }
  if (!problem.empty())
    error->all(FLERR,
               "pair_style ep/torch: TorchScript could not load model '{}' ({}). Fix: re-export "
               "the model with the torch this plugin is built against ({}.{}.{})",
               path, problem, TORCH_VERSION_MAJOR, TORCH_VERSION_MINOR, TORCH_VERSION_PATCH);

  model_path = path;
}

/* ----------------------------------------------------------------------
   factors between the model's units and the LAMMPS unit style
------------------------------------------------------------------------- */

void PairEPTorch::set_unit_factors()
{
  const std::string style = update->unit_style;
  auto found = LAMMPS_UNITS.find(style);
  if (found == LAMMPS_UNITS.end())
    error->all(FLERR,
               "pair_style ep/torch supports 'units metal' and 'units real' (models in any "
               "physical units) and 'units lj' (models in reduced units), not 'units {}'. Fix: "
               "use one of those unit styles",
               style);

  const bool model_reduced = model_length_unit == REDUCED;
  const bool lammps_reduced = style == "lj";
  if (model_reduced && !lammps_reduced)
    error->all(FLERR,
               "pair_style ep/torch: model '{}' is in reduced (lj) units, so it runs only under "
               "'units lj', but this input uses 'units {}'. Fix: use 'units lj', or a model "
               "exported in physical units",
               model_path.empty() ? "" : model_path, style);
  if (!model_reduced && lammps_reduced)
    error->all(FLERR,
               "pair_style ep/torch: model is in physical units ({}, {}) and cannot run under "
               "'units lj' (reduced units carry no scale to convert with). Fix: use 'units "
               "metal' or 'units real', or a model exported with units 'lj'",
               model_length_unit, model_energy_unit);

  if (model_reduced) {
    length_factor = 1.0;
    energy_factor = 1.0;
  } else {
    // same expressions as engine_plugins.units.length_factor / energy_factor
    length_factor = LENGTH_TO_NM.at(found->second.first) / LENGTH_TO_NM.at(model_length_unit);
    energy_factor =
        ENERGY_TO_KJ_PER_MOL.at(model_energy_unit) / ENERGY_TO_KJ_PER_MOL.at(found->second.second);
  }
  force_factor = energy_factor * length_factor;
  cutoff = model_cutoff / length_factor;
}

/* ----------------------------------------------------------------------
   pair_coeff * * NAME1 NAME2 ... : model type name of each LAMMPS type
------------------------------------------------------------------------- */

void PairEPTorch::coeff(int narg, char **arg)
{
  if (!allocated) allocate();

  const int ntypes = atom->ntypes;
  if (narg < 2 || strcmp(arg[0], "*") != 0 || strcmp(arg[1], "*") != 0)
    error->all(FLERR,
               "Incorrect args for pair coefficients: pair_style ep/torch needs 'pair_coeff * * "
               "NAME1 ... NAME{}', one model type name per LAMMPS atom type. Model type names: {}",
               ntypes, join_names(type_names));
  if (narg - 2 != ntypes)
    error->all(FLERR,
               "pair_coeff * * for pair_style ep/torch: got {} type name(s) for {} LAMMPS atom "
               "type(s); give one model type name per LAMMPS type, in LAMMPS type order. Model "
               "type names: {}",
               narg - 2, ntypes, join_names(type_names));

  for (int itype = 1; itype <= ntypes; itype++) {
    const std::string name = arg[itype + 1];
    auto found = std::find(type_names.begin(), type_names.end(), name);
    if (found == type_names.end())
      error->all(FLERR,
                 "pair_coeff * * for pair_style ep/torch: LAMMPS type {} is mapped to '{}', "
                 "which is not a type of model '{}'. Model type names: {}",
                 itype, name, model_path, join_names(type_names));
    type_map[itype] = static_cast<int>(found - type_names.begin());
  }

  for (int i = 1; i <= ntypes; i++)
    for (int j = i; j <= ntypes; j++) setflag[i][j] = 1;
}

/* ---------------------------------------------------------------------- */

void PairEPTorch::init_style()
{
  if (force->newton_pair == 0)
    error->all(FLERR,
               "Pair style ep/torch requires newton pair on (forces on ghost atoms are summed "
               "onto their owners). Fix: remove 'newton off' from the input, or use 'newton on'");

  const int periodic[3] = {domain->xperiodic, domain->yperiodic, domain->zperiodic};
  std::string nonperiodic_dims, periodic_dims;
  for (int d = 0; d < domain->dimension; d++) {
    std::string &dims = periodic[d] ? periodic_dims : nonperiodic_dims;
    if (!dims.empty()) dims += ' ';
    dims += "xyz"[d];
  }
  if (model_periodicity == "periodic" && !nonperiodic_dims.empty())
    error->all(FLERR,
               "Pair style ep/torch: model '{}' is declared for periodic systems (periodicity "
               "'periodic'), but the LAMMPS box is non-periodic in {}. Fix: use 'boundary p p "
               "p', or a model exported with periodicity 'nonperiodic' or 'any'",
               model_path, nonperiodic_dims);
  if (model_periodicity == "nonperiodic" && !periodic_dims.empty())
    error->all(FLERR,
               "Pair style ep/torch: model '{}' is declared for non-periodic systems (periodicity "
               "'nonperiodic'), but the LAMMPS box is periodic in {}. Fix: use non-periodic "
               "boundaries ('boundary f f f' or s/m), or a model exported with periodicity "
               "'periodic' or 'any'",
               model_path, periodic_dims);

  if (comm->mode != Comm::SINGLE)
    error->all(FLERR,
               "Pair style ep/torch requires 'comm_modify mode single' (it sets the ghost "
               "cutoff from the model's message-passing depth)");

  // full neighbor list that also holds the neighbors of ghost atoms

  neighbor->add_request(this, NeighConst::REQ_FULL | NeighConst::REQ_GHOST);

  // halo: every atom within layers x cutoff of an owned atom must be a ghost,
  // also after atoms moved by up to half the skin since the last reneighboring

  const double halo = std::max(1, num_layers) * cutoff + neighbor->skin;
  if (comm->cutghostuser < halo) {
    comm->cutghostuser = halo;
    if (comm->me == 0 && num_layers > 1)
      utils::logmesg(lmp,
                     "ep/torch: ghost cutoff set to {} ({} message-passing layers x cutoff {} + "
                     "skin {})\n",
                     halo, num_layers, cutoff, neighbor->skin);
  }
}

/* ---------------------------------------------------------------------- */

double PairEPTorch::init_one(int i, int j)
{
  if (setflag[i][j] == 0)
    error->all(FLERR,
               "All pair coeffs are not set: pair_style ep/torch needs 'pair_coeff * * NAME1 ... "
               "NAME{}'",
               atom->ntypes);

  cutghost[i][j] = cutghost[j][i] = cutoff;
  return cutoff;
}

/* ----------------------------------------------------------------------
   for each ghost atom: the owned atom of this rank it is a periodic image of,
   or -1 (owned by another rank). Indices only change when LAMMPS rebuilds the
   neighbor lists (atoms migrate and are sorted then), so cached per build.
------------------------------------------------------------------------- */

void PairEPTorch::find_ghost_owners()
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
   graph of the atoms that influence the energy of owned atoms.
   breadth-first over the neighbor list, in cutoff hops from owned atoms:
   nodes with hop <= L, edges [centre, neighbour] out of every node with
   hop <= L-1, plus the reverse of edges that end at a node with hop == L
   (so the edge list holds both directions of every pair it contains).
   with fold, a ghost image of an owned atom is that atom's node (hop 0) and
   the edge carries the shift x[ghost] - x[owner].
------------------------------------------------------------------------- */

void PairEPTorch::build_graph(bool fold)
{
  double **x = atom->x;
  const int nlocal = atom->nlocal;
  const int nall = nlocal + atom->nghost;
  const int *numneigh = list->numneigh;
  int **firstneigh = list->firstneigh;
  const double cutsq_lammps = cutoff * cutoff;
  const int nlayers = std::max(1, num_layers);
  int nfolded = 0;

  if (fold) find_ghost_owners();

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
      const double xtmp = x[i][0];
      const double ytmp = x[i][1];
      const double ztmp = x[i][2];
      const int *jlist = firstneigh[i];
      const int jnum = numneigh[i];
      const int64_t inode = node_of[i];
      for (int jj = 0; jj < jnum; jj++) {
        const int j = jlist[jj] & NEIGHMASK;
        const double delx = x[j][0] - xtmp;
        const double dely = x[j][1] - ytmp;
        const double delz = x[j][2] - ztmp;
        const double rsq = delx * delx + dely * dely + delz * delz;
        if (rsq >= cutsq_lammps) continue;

        int t = j;    // the atom whose node the edge ends at
        double sx = 0.0, sy = 0.0, sz = 0.0;
        if (fold && j >= nlocal && ghost_owner[j - nlocal] >= 0) {
          t = ghost_owner[j - nlocal];
          sx = (x[j][0] - x[t][0]) * length_factor;
          sy = (x[j][1] - x[t][1]) * length_factor;
          sz = (x[j][2] - x[t][2]) * length_factor;
          ++nfolded;
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
  last_folded = nfolded;
}

/* ----------------------------------------------------------------------
   read-only values for lammps_extract_pair(): unit factors, cutoff, and
   diagnostics of the graph of the last evaluation
------------------------------------------------------------------------- */

void *PairEPTorch::extract(const char *str, int &dim)
{
  dim = 0;
  if (strcmp(str, "length_factor") == 0) return (void *) &length_factor;
  if (strcmp(str, "energy_factor") == 0) return (void *) &energy_factor;
  if (strcmp(str, "cutoff") == 0) return (void *) &cutoff;
  if (strcmp(str, "graph_nodes") == 0) return (void *) &last_nodes;
  if (strcmp(str, "graph_edges") == 0) return (void *) &last_edges;
  if (strcmp(str, "graph_folded_edges") == 0) return (void *) &last_folded;
  if (strcmp(str, "folded_evaluations") == 0) return (void *) &num_folded_evals;
  if (strcmp(str, "explicit_evaluations") == 0) return (void *) &num_explicit_evals;
  return nullptr;
}

/* ---------------------------------------------------------------------- */

void PairEPTorch::compute(int eflag, int vflag)
{
  ev_init(eflag, vflag);

  if (vflag_atom)
    error->all(FLERR,
               "Pair style ep/torch does not compute per-atom virials (compute stress/atom, "
               "centroid/stress/atom); use the global pressure/virial");

  double **x = atom->x;
  double **f = atom->f;
  const int *type = atom->type;
  const int nlocal = atom->nlocal;

  for (int i = 0; i < nlocal; i++)
    if (!std::isfinite(x[i][0]) || !std::isfinite(x[i][1]) || !std::isfinite(x[i][2]))
      error->one(FLERR,
                 "Pair style ep/torch: atom {} (type {}) has a non-finite position ({}, {}, {}) "
                 "at step {}: the simulation became unstable. Fix: minimize first, use a smaller "
                 "timestep, or check the input structure",
                 atom->tag[i], type[i], x[i][0], x[i][1], x[i][2], update->ntimestep);

  if (nlocal > 0) {
    // the virial (f dot r over local + ghost atoms) needs ghosts as explicit nodes;
    // ev_init() clears vflag_either when the virial comes from fdotr, so test both
    const bool fold = !(vflag_fdotr || vflag_either);
    build_graph(fold);
    if (fold)
      num_folded_evals += 1.0;
    else
      num_explicit_evals += 1.0;

    const int64_t nnodes = static_cast<int64_t>(atom_of.size());
    const int64_t nedges = static_cast<int64_t>(edge_src.size());
    pos_buf.resize(3 * nnodes);
    type_buf.resize(nnodes);
    for (int64_t n = 0; n < nnodes; n++) {
      const int a = atom_of[n];
      pos_buf[3 * n + 0] = x[a][0] * length_factor;
      pos_buf[3 * n + 1] = x[a][1] * length_factor;
      pos_buf[3 * n + 2] = x[a][2] * length_factor;
      type_buf[n] = type_map[type[a]];
    }
    edge_buf.resize(2 * nedges);
    std::copy(edge_src.begin(), edge_src.end(), edge_buf.begin());
    std::copy(edge_dst.begin(), edge_dst.end(), edge_buf.begin() + nedges);
    last_nodes = static_cast<double>(nnodes);
    last_edges = static_cast<double>(nedges);

    // forward: grad mode stays on, conservative models differentiate inside

    TorchState &ts = *torch_state;
    torch::Tensor atom_energy, forces;
    std::string problem;
    try {
      const auto as_double = torch::TensorOptions().dtype(torch::kFloat64);
      const auto as_long = torch::TensorOptions().dtype(torch::kInt64);
      torch::Tensor pos = torch::from_blob(pos_buf.data(), {nnodes, 3}, as_double)
                              .to(ts.device, ts.dtype, false, true);
      torch::Tensor types = torch::from_blob(type_buf.data(), {nnodes}, as_long)
                                .to(ts.device, torch::kInt64, false, true);
      torch::Tensor edge_index = torch::from_blob(edge_buf.data(), {2, nedges}, as_long)
                                     .to(ts.device, torch::kInt64, false, true);
      torch::Tensor edge_shift = torch::from_blob(shift_buf.data(), {nedges, 3}, as_double)
                                     .to(ts.device, ts.dtype, false, true);

      ts.inputs.clear();
      ts.inputs.emplace_back(pos);
      ts.inputs.emplace_back(types);
      ts.inputs.emplace_back(edge_index);
      ts.inputs.emplace_back(edge_shift);
      ts.inputs.emplace_back(static_cast<int64_t>(nlocal));
      auto out = ts.module.forward(ts.inputs);
      ts.inputs.clear();

      if (!out.isTuple() || out.toTupleRef().elements().size() != 2 ||
          !out.toTupleRef().elements()[0].isTensor() || !out.toTupleRef().elements()[1].isTensor()) {
        problem = "forward did not return (atom_energy, forces)";
      } else {
        const auto &outputs = out.toTupleRef().elements();
        atom_energy = outputs[0].toTensor().to(torch::kCPU, torch::kFloat64).contiguous();
        forces = outputs[1].toTensor().to(torch::kCPU, torch::kFloat64).contiguous();
        if (atom_energy.dim() != 1 || atom_energy.size(0) != nnodes || forces.dim() != 2 ||
            forces.size(0) != nnodes || forces.size(1) != 3)
          problem = fmt::format("outputs have shapes {} and {}, expected ({},) and ({}, 3)",
                                std::string(c10::str(atom_energy.sizes())),
                                std::string(c10::str(forces.sizes())), nnodes, nnodes);
      }
    } catch (const c10::Error &e) {
      problem = first_line(e.what_without_backtrace());
    } catch (const std::exception &e) {
      problem = first_line(e.what());
    }
    if (!problem.empty())
      error->one(FLERR, "Pair style ep/torch: model '{}' failed at step {}: {}", model_path,
                 update->ntimestep, problem);

    const double *energy_ptr = atom_energy.data_ptr<double>();
    const double *force_ptr = forces.data_ptr<double>();
    for (int64_t n = 0; n < nnodes; n++) {
      const int a = atom_of[n];
      f[a][0] += force_factor * force_ptr[3 * n + 0];
      f[a][1] += force_factor * force_ptr[3 * n + 1];
      f[a][2] += force_factor * force_ptr[3 * n + 2];
    }
    if (eflag_global) {
      double energy = 0.0;
      for (int i = 0; i < nlocal; i++) energy += energy_ptr[i];
      eng_vdwl += energy_factor * energy;
    }
    if (eflag_atom)
      for (int i = 0; i < nlocal; i++) eatom[i] += energy_factor * energy_ptr[i];
  }

  // ghosts are explicit nodes with no shifts, so the virial is sum r.f over local + ghost

  if (vflag_fdotr) virial_fdotr_compute();
}
