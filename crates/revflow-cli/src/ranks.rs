//! The processes of one job: an MPI job's ranks when built with the `mpi` feature and started
//! by `mpirun`/`srun`, else this process alone.

use std::process::ExitCode;

use revflow::parallel::Group;
use revflow::FlowError;

pub struct Ranks {
    #[cfg(feature = "mpi")]
    mpi: Option<revflow::parallel::mpi::Mpi>,
}

impl Ranks {
    /// Joins the MPI job if there is one; each rank then gets its share of this machine's
    /// cores for its thread pool (unless `RAYON_NUM_THREADS` says otherwise).
    pub fn start() -> Ranks {
        #[cfg(feature = "mpi")]
        {
            use revflow::parallel::mpi::Mpi;
            let mpi = Mpi::from_launcher();
            if mpi.is_some() && std::env::var_os("RAYON_NUM_THREADS").is_none() {
                let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
                let threads = (cores / Mpi::local_size()).max(1);
                // Fails only if a pool exists already, which at start it does not.
                let _ = rayon::ThreadPoolBuilder::new()
                    .num_threads(threads)
                    .build_global();
            }
            Ranks { mpi }
        }
        #[cfg(not(feature = "mpi"))]
        Ranks {}
    }

    /// The job's ranks, `None` when this process runs alone.
    pub fn group(&self) -> Option<&dyn Group> {
        #[cfg(feature = "mpi")]
        if let Some(mpi) = &self.mpi {
            if mpi.size() > 1 {
                return Some(mpi);
            }
        }
        None
    }

    pub fn rank(&self) -> usize {
        self.group().map_or(0, |g| g.rank())
    }

    /// Rank 0 (or the only process) prints and writes.
    pub fn leads(&self) -> bool {
        self.rank() == 0
    }

    /// Refuses a command that runs in one process only when started as several ranks.
    pub fn alone(&self, command: &str) -> revflow::Result<()> {
        match self.group() {
            Some(g) => Err(FlowError::Config(format!(
                "`revflow {command}` runs in one process, not as {} MPI ranks: start it without mpirun (train, eval and score run on several)",
                g.size()
            ))),
            None => Ok(()),
        }
    }

    /// Reports `e` and ends this process, or the whole job: one line (naming the rank when
    /// there are several), then exit code 2, or 130 after an interrupt. Any other error on
    /// one rank would leave the others waiting in a collective, so it ends every rank
    /// (MPI_Abort).
    pub fn fail(&self, e: FlowError) -> ExitCode {
        let interrupted = matches!(e, FlowError::Interrupted { .. });
        match self.group() {
            None => eprintln!("revflow: {e}"),
            // Every rank is interrupted at the same step: rank 0 says so for all.
            Some(_) if interrupted => {
                if self.leads() {
                    eprintln!("revflow: {e}");
                }
            }
            Some(g) => {
                eprintln!("revflow: rank {} of {}: {e}", g.rank(), g.size());
                #[cfg(feature = "mpi")]
                if let Some(mpi) = &self.mpi {
                    mpi.abort(2);
                }
            }
        }
        match interrupted {
            true => ExitCode::from(130),
            false => ExitCode::from(2),
        }
    }
}
