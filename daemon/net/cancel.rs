//! A cheap way for hot loops to notice cancellation (see [`CancelWatch`]).

use tokio_util::sync::CancellationToken;

/// Waits for a token to be cancelled from a loop that polls often (per
/// accept, per read, per datagram) without paying for it each time.
///
/// `CancellationToken::cancelled()` registers a waiter under the token's
/// mutex, shared by every connection of a listener, and every poll of it
/// takes that lock again. This registers once, and later polls from the
/// same task only read the token's atomic flag: the registered waker wakes
/// the task when the token is cancelled. A poll with a different waker
/// registers again.
pub struct CancelWatch<'a> {
    token: &'a CancellationToken,
    waiter: std::pin::Pin<Box<tokio_util::sync::WaitForCancellationFuture<'a>>>,
    registered: Option<std::task::Waker>,
}

impl<'a> CancelWatch<'a> {
    pub fn new(token: &'a CancellationToken) -> Self {
        CancelWatch {
            token,
            waiter: Box::pin(token.cancelled()),
            registered: None,
        }
    }

    /// Ready once the token is cancelled.
    pub fn poll_cancelled(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<()> {
        use std::future::Future as _;
        use std::task::Poll;
        if self.token.is_cancelled() {
            return Poll::Ready(());
        }
        if self
            .registered
            .as_ref()
            .is_some_and(|w| w.will_wake(cx.waker()))
        {
            return Poll::Pending;
        }
        if self.waiter.as_mut().poll(cx).is_ready() {
            return Poll::Ready(());
        }
        self.registered = Some(cx.waker().clone());
        Poll::Pending
    }

    /// A future for `select!` branches; the registration outlives it.
    pub fn cancelled(&mut self) -> impl std::future::Future<Output = ()> + '_ {
        std::future::poll_fn(|cx| self.poll_cancelled(cx))
    }
}
