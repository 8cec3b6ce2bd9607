//! The page source: where pages come from. The HTTP client implements it;
//! unit tests use a fake. A request needs a budget [`Permit`], taken by
//! value, so none can be sent without one.

use async_trait::async_trait;
use url::Url;

use crate::cas::{ApiError, Client, Page};
use crate::coord::Permit;
use crate::shard::Shard;
use crate::window::Window;

#[async_trait]
pub trait PageSource: Send + Sync {
    /// The address of the first page of `window` for `shard`.
    fn first_page(&self, shard: &Shard, window: &Window) -> Url;
    /// The address a next link names, refused when it leaves the host.
    fn next_page(&self, link: &str) -> Result<Url, ApiError>;
    /// Fetches one page, spending `permit`.
    async fn fetch(&self, permit: Permit, url: &Url) -> Result<Page, ApiError>;
    /// Where pages come from, for the start-up log line.
    fn describe(&self) -> String;
    /// Reads the credentials again after the API refused them; whether
    /// they changed (then the request is worth sending again at once).
    fn reload_credentials(&self) -> bool {
        false
    }
}

#[async_trait]
impl PageSource for Client {
    fn first_page(&self, shard: &Shard, window: &Window) -> Url {
        self.first_page_url(shard, window)
    }
    fn next_page(&self, link: &str) -> Result<Url, ApiError> {
        self.next_page_url(link)
    }
    async fn fetch(&self, permit: Permit, url: &Url) -> Result<Page, ApiError> {
        Client::fetch(self, permit, url).await
    }
    fn describe(&self) -> String {
        format!("{} ({} dialect)", self.base(), self.dialect())
    }
    fn reload_credentials(&self) -> bool {
        self.reload_token()
    }
}
