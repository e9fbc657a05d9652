//! CPU-bound work off the async runtime: [`blocking`] runs one closure on tokio's blocking pool,
//! [`compute`] one on rayon's pool (as many at once as there are cores), [`par_map`] maps a closure over items on all cores (rayon) from there. A panic or a cancelled
//! task comes back as a [`TaskError`], never as a panic of the caller.

use rayon::prelude::*;

/// A blocking task that did not return: it panicked or its runtime shut down.
#[derive(Debug, thiserror::Error)]
#[error("a background task failed: {0}")]
pub struct TaskError(#[source] pub tokio::task::JoinError);

/// `f` on tokio's blocking pool.
pub async fn blocking<R: Send + 'static>(
    f: impl FnOnce() -> R + Send + 'static,
) -> Result<R, TaskError> {
    tokio::task::spawn_blocking(f).await.map_err(TaskError)
}

/// `f` on one of rayon's threads (one per core), waited for from tokio's blocking pool. For
/// CPU-bound work that many requests may ask for at once (a query's decode and encode): however
/// many wait, only as many run as there are cores, and their allocations stay in those threads'
/// few malloc arenas, so memory does not grow with the number of threads tokio has started.
pub async fn compute<R: Send + 'static>(
    f: impl FnOnce() -> R + Send + 'static,
) -> Result<R, TaskError> {
    // Called from outside the pool, `join` runs both closures on the pool and waits.
    blocking(move || rayon::join(f, || ()).0).await
}

/// `f` over `items` on rayon's pool, one item per task (each is an image's worth of work), in
/// order, off the async runtime.
pub async fn par_map<T, R>(
    items: Vec<T>,
    f: impl Fn(T) -> R + Send + Sync + 'static,
) -> Result<Vec<R>, TaskError>
where
    T: Send + 'static,
    R: Send + 'static,
{
    blocking(move || items.into_par_iter().with_max_len(1).map(f).collect()).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn par_map_keeps_the_order() {
        let out = par_map((0..100).collect(), |i: u32| i * 2).await.unwrap();
        assert_eq!(out, (0..100).map(|i| i * 2).collect::<Vec<_>>());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn compute_runs_on_the_pool() {
        let on_pool = compute(|| rayon::current_thread_index().is_some())
            .await
            .unwrap();
        assert!(on_pool);
        let r = compute(|| -> u32 { panic!("boom") }).await;
        assert!(r.unwrap_err().0.is_panic());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_panic_is_an_error() {
        let r = blocking(|| -> u32 { panic!("boom") }).await;
        let e = r.unwrap_err();
        assert!(e.0.is_panic(), "{e}");
        let r = par_map(
            vec![1, 2, 3],
            |i: u32| if i == 2 { panic!("two") } else { i },
        )
        .await;
        assert!(r.is_err());
    }
}
