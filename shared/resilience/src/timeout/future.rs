use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};

use crate::error::{BoxError, Elapsed};

pin_project! {
    /// A future bounded by a deadline; the timer is created only if the inner future is pending.
    ///
    /// Without a deadline it simply forwards the inner future.
    #[derive(Debug)]
    #[must_use = "futures do nothing unless polled"]
    pub struct TimeoutFuture<F> {
        #[pin]
        inner: F,
        #[pin]
        sleep: Option<Sleep>,
        deadline: Option<Instant>,
        // Also honour the task-local deadline seen when the timer is armed (tower services
        // create the future before it is polled, possibly outside the `with_deadline` scope).
        inherit_deadline: bool,
    }
}

impl<F> TimeoutFuture<F> {
    pub(crate) fn new(inner: F, deadline: Option<Instant>) -> Self {
        TimeoutFuture {
            inner,
            sleep: None,
            deadline,
            inherit_deadline: false,
        }
    }

    pub(crate) fn inheriting(inner: F, deadline: Option<Instant>) -> Self {
        TimeoutFuture {
            inner,
            sleep: None,
            deadline,
            inherit_deadline: true,
        }
    }
}

impl<F: Future> Future for TimeoutFuture<F> {
    type Output = Result<F::Output, Elapsed>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        if let Poll::Ready(out) = this.inner.poll(cx) {
            return Poll::Ready(Ok(out));
        }
        if this.sleep.is_none() && *this.inherit_deadline {
            *this.inherit_deadline = false;
            if let Some(task) = super::current_deadline() {
                *this.deadline = Some(this.deadline.map_or(task, |own| own.min(task)));
            }
        }
        let Some(deadline) = *this.deadline else {
            return Poll::Pending;
        };
        if this.sleep.is_none() {
            this.sleep.set(Some(tokio::time::sleep_until(deadline)));
        }
        match this.sleep.as_pin_mut() {
            Some(sleep) => {
                ready!(sleep.poll(cx));
                Poll::Ready(Err(Elapsed::new()))
            }
            None => Poll::Pending,
        }
    }
}

pin_project! {
    /// Response future of the [`Timeout`](super::Timeout) service.
    #[derive(Debug)]
    #[must_use = "futures do nothing unless polled"]
    pub struct ResponseFuture<F> {
        #[pin]
        inner: TimeoutFuture<F>,
    }
}

impl<F> ResponseFuture<F> {
    pub(crate) fn new(inner: TimeoutFuture<F>) -> Self {
        ResponseFuture { inner }
    }
}

impl<F, T, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
{
    type Output = Result<T, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match ready!(self.project().inner.poll(cx)) {
            Ok(Ok(v)) => Poll::Ready(Ok(v)),
            Ok(Err(e)) => Poll::Ready(Err(e.into())),
            Err(elapsed) => Poll::Ready(Err(Box::new(elapsed))),
        }
    }
}
